-- Put one scheduled message back into Redis as the audit log last saw it (`scheduled`): the
-- recovery after Redis lost its data (sessions/restore.py, maskline/recovery.py), run after the
-- sessions were restored. Idempotent: a message Redis already has is left alone.
-- KEYS[1]  Service prefix "ml:{KS}:"
-- ARGV[1]  now_ms or '' (server TIME)
-- ARGV[2]  JSON {sid, session_sid, participant_sid, data, send_at_ms, created_ms} (strings)
-- ARGV[3]  what: scheduled (still to go out: back on the due list) | lost (its time had come
--          before the data was lost: whether it went out is unknown, so it ends `failed`,
--          reason store_lost, with its event; never sent, never silently dropped)
-- Returns: restored | failed | exists | gone (its session is not live or the participant left it:
-- nothing written; the session's end already canceled it, or will be in the log)

local now = now_ms(ARGV[1])
local m = cjson.decode(ARGV[2])
local km, sid, kp = m.sid, m.session_sid, m.participant_sid
local key = P .. 'sm:' .. km
if redis.call('EXISTS', key) == 1 then return 'exists' end
local sess = session_record(sid)
if not sess or sess.status == 'closed' or
   not has_part(sess.parts, kp) then
  return 'gone'
end
local send_at = tonumber(m.send_at_ms) or now
redis.call('HSET', key, 'sid', km, 'session_sid', sid, 'participant_sid', kp, 'data', m.data,
  'send_at_ms', send_at, 'status', 'scheduled', 'reason', '', 'interaction_sid', '',
  'created_ms', m.created_ms, 'updated_ms', now, 'restored_ms', now)
redis.call('ZADD', P .. 'sess:' .. sid .. ':sm', send_at, km)
if ARGV[3] == 'lost' then
  settle_scheduled(km, 'failed', 'store_lost', now)
  return 'failed'
end
redis.call('ZADD', P .. 'due', send_at, km)
return 'restored'
