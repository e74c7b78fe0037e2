-- Cancel one scheduled message that has not gone out yet (the API's DELETE, `maskline scheduled cancel`).
-- KEYS[1]  Service prefix "ml:{KS}:"
-- ARGV[1]  now_ms or ''
-- ARGV[2]  session sid (KC)     ARGV[3] scheduled message sid (KM)
-- ARGV[4]  reason
-- Returns JSON: the message, or {e, m}: 20404 not in this session; 89004 no longer scheduled.

local now = now_ms(ARGV[1])
local sid, km = ARGV[2], ARGV[3]
local m = hgetall(P .. 'sm:' .. km)
if not m or m.session_sid ~= sid then
  return fail(20404, 'ScheduledMessage ' .. km .. ' was not found in Session ' .. sid)
end
if m.status ~= 'scheduled' then
  return fail(89004, 'ScheduledMessage ' .. km .. ' is ' .. m.status .. ', no longer scheduled: it cannot be canceled')
end
redis.call('ZREM', P .. 'due', km)
return cjson.encode(settle_scheduled(km, 'canceled', ARGV[4], now))
