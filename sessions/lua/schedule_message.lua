-- Schedule a text to one participant of a live session, from their proxy number, at a time.
-- KEYS[1]  Service prefix "ml:{KS}:"
-- ARGV[1]  now_ms or ''
-- ARGV[2]  event id for scheduled_message.created
-- ARGV[3]  session sid (KC)     ARGV[4] participant sid (KP)     ARGV[5] scheduled message sid (KM)
-- ARGV[6]  send_at_ms
-- ARGV[7]  data (JSON text: {"body": ..., "media": [...]})
-- Returns JSON: the scheduled message, or {e, m}: 20404 no such session / participant in it;
-- 80607 the session is closed; 21610 the participant opted out of texts from their proxy number.

local now = now_ms(ARGV[1])
local sid, kp, km = ARGV[3], ARGV[4], ARGV[5]
local sk = P .. 'sess:' .. sid
local sess, part = text_target(sid, kp, 'scheduled')
if not sess then return part end
local key = P .. 'sm:' .. km
redis.call('HSET', key, 'sid', km, 'session_sid', sid, 'participant_sid', kp, 'data', ARGV[7],
  'send_at_ms', ARGV[6], 'status', 'scheduled', 'reason', '', 'interaction_sid', '', 'created_ms', now,
  'updated_ms', now)
redis.call('ZADD', P .. 'due', tonumber(ARGV[6]), km)
redis.call('ZADD', sk .. ':sm', tonumber(ARGV[6]), km)
local view = hgetall(key)
view.numbers = { part.identifier, part.proxy_identifier }
emit(ARGV[2], 'scheduled_message.created', now, view)
view.numbers = nil
return cjson.encode(view)
