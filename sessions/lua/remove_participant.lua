-- Remove a participant from a session; its pair goes into cool-off like a closed session's.
-- KEYS[1]  Service prefix "ml:{KS}:"
-- ARGV[1]  now_ms or ''
-- ARGV[2]  event id for participant.removed
-- ARGV[3]  session sid
-- ARGV[4]  participant sid
-- Returns JSON: the removed participant, or {e=code, m=message}.

local now = now_ms(ARGV[1])
local sid, kp = ARGV[3], ARGV[4]
local sk = P .. 'sess:' .. sid
local sess, members = session_record(sid)
if not sess then return fail(20404, 'Session ' .. sid .. ' was not found') end
local kept, gone = {}, nil
for _, other in ipairs(members) do
  if other.sid == kp then gone = other else kept[#kept + 1] = other end
end
if not gone then return fail(20404, 'Participant ' .. kp .. ' was not found in Session ' .. sid) end
local cool_off_ms = (tonumber(svc_field('cool_off_s', '0')) or 0) * 1000
if sess.status ~= 'closed' then
  release_pair(sid, kp, gone.identifier, gone.proxy_identifier, gone.pin, cool_off_ms)
end
cancel_scheduled(sid, 'participant_removed', now, kp)
-- Out of the session's hash into one of its own, for as long as its pair may cool off (a day at
-- least): still readable (with date_deleted), and found by erasure.
local pk = P .. 'part:' .. kp
with_pn(gone)  -- (its number may leave the pool later)
hset_present(pk, 'session_sid', sid, 'identifier', gone.identifier, 'proxy_identifier', gone.proxy_identifier,
  'proxy_identifier_sid', gone.proxy_identifier_sid, 'friendly_name', gone.friendly_name, 'pin', gone.pin,
  'created_ms', gone.created_ms, 'updated_ms', now, 'deleted_ms', now)
redis.call('PEXPIRE', pk, math.max(cool_off_ms, 86400000))
set_members(sid, sess.created_ms, kept, #members, sess.status == 'closed')
redis.call('HSET', sk, 'updated_ms', now)
local p = participant_view(sid, kp)
emit(ARGV[2], 'participant.removed', now, { session_sid = sid, participant = p,
  numbers = { p.identifier, p.proxy_identifier } })
return cjson.encode(p)
