-- Take a number out of the Service's pool. Refused while live sessions use it, so that no live
-- conversation loses its route.
-- KEYS[1]  Service prefix "ml:{KS}:"
-- ARGV[1]  E.164 number
-- (also drops it from `numsid`, the PN sid -> number index)
-- Returns -1 if it was not in the pool, its in_use count (> 0) if refused, 0 when removed.

local num = ARGV[1]
local nk = P .. 'num:' .. num
local f = redis.call('HMGET', nk, 'region', 'area', 'reserved', 'in_use', 'wa')
if not f[1] then return -1 end
local in_use = tonumber(f[4]) or 0
if in_use > 0 then return in_use end
for _, s in ipairs(number_scopes(f[1], f[2], f[5])) do
  redis.call('HINCRBY', P .. 'regions', s, -1)
  if f[3] == '1' then redis.call('HINCRBY', P .. 'regions', s .. ':r', -1) end
  redis.call('ZREM', P .. 'pool:' .. s, num)
end
redis.call('HDEL', P .. 'numsid', redis.call('HGET', nk, 'sid'))
redis.call('DEL', nk)
return 0
