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
local parts = redis.call('HGET', sk, 'parts')
if not parts then return fail(20404, 'Session ' .. sid .. ' was not found') end
local kept, found = {}, false
for _, other in ipairs(part_sids(parts)) do
  if other == kp then found = true else kept[#kept + 1] = other end
end
if not found then return fail(20404, 'Participant ' .. kp .. ' was not found in Session ' .. sid) end
local cool_off_ms = (tonumber(svc_field('cool_off_s', '0')) or 0) * 1000
if redis.call('HGET', sk, 'status') ~= 'closed' then release_pair(sid, kp, cool_off_ms) end
cancel_scheduled(sid, 'participant_removed', now, kp)
redis.call('HSET', P .. 'part:' .. kp, 'deleted_ms', now, 'updated_ms', now)
redis.call('PEXPIRE', P .. 'part:' .. kp, math.max(cool_off_ms, 86400000))
redis.call('HSET', sk, 'parts', parts_field(kept), 'updated_ms', now)
local p = participant_view(kp)
emit(ARGV[2], 'participant.removed', now, { session_sid = sid, participant = p,
  numbers = { p.identifier, p.proxy_identifier } })
return cjson.encode(p)
