-- Close the sessions whose expiry is due (the sweeper; safe in every worker at once, because a
-- session leaves the expiry zset in the same atomic step that closes it).
-- KEYS[1]  Service prefix "ml:{KS}:"
-- ARGV[1]  now_ms or ''
-- ARGV[2]  event id base: 28 hex chars; the script appends 4 hex per closed session
-- ARGV[3]  at most this many sessions per call
-- Returns the number of sessions closed.

local now = now_ms(ARGV[1])
local due = redis.call('ZRANGEBYSCORE', P .. 'expiry', '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
local closed = 0
for i, sid in ipairs(due) do
  local f = redis.call('HMGET', P .. 'sess:' .. sid, 'date_expiry_ms')
  local de = tonumber(f[1] or '') or 0
  local reason = 'ttl'
  if de > 0 and de <= now then reason = 'expiry' end
  if close_session(sid, reason, now, ARGV[2] .. string.format('%04x', i % 65536)) then closed = closed + 1 end
  redis.call('ZREM', P .. 'expiry', sid)
end
return closed
