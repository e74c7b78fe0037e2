-- Put a number in the Service's pool, or change whether it is reserved.
-- KEYS[1]  Service prefix "ml:{KS}:"
-- ARGV[1]  E.164 number
-- ARGV[2]  its PN sid
-- ARGV[3]  region key (see pool/numbers.py), ARGV[4] NANP area code or ''
-- ARGV[5]  '1' reserved (never auto-assigned), '0' in the pool
-- ARGV[6]  '1' the number can carry WhatsApp (also in the `whatsapp` scope), '0' not; fixed when
--          the number is first added
-- Returns its in_use count.
-- `regions` counts every number and the reserved ones, per region and per region:area, so the
-- allocator can tell "no number here" (80203/80205/80206) from "only reserved ones" (80207).

local num, sid, region, area, reserved = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local nk = P .. 'num:' .. num
local was = redis.call('HGET', nk, 'reserved')
local wa = redis.call('HGET', nk, 'wa') or ARGV[6]
local scopes = number_scopes(region, area, wa)
redis.call('HSET', P .. 'numsid', sid, num)
if not was then
  redis.call('HSET', nk, 'sid', sid, 'region', region, 'area', area, 'reserved', reserved, 'in_use', 0, 'wa', wa)
  for _, s in ipairs(scopes) do redis.call('HINCRBY', P .. 'regions', s, 1) end
  was = '0'
  if reserved == '0' then
    for _, s in ipairs(scopes) do redis.call('ZADD', P .. 'pool:' .. s, 0, num) end
    return 0
  end
end
local in_use = tonumber(redis.call('HGET', nk, 'in_use')) or 0
if was == reserved and redis.call('HGET', nk, 'sid') == sid then return in_use end
redis.call('HSET', nk, 'reserved', reserved)
for _, s in ipairs(scopes) do
  if reserved == '1' then
    redis.call('HINCRBY', P .. 'regions', s .. ':r', 1)
    redis.call('ZREM', P .. 'pool:' .. s, num)
  else
    redis.call('HINCRBY', P .. 'regions', s .. ':r', -1)
    redis.call('ZADD', P .. 'pool:' .. s, in_use, num)
  end
end
return in_use
