-- Record how a claimed scheduled message ended: sent (with its interaction), failed or canceled.
-- KEYS[1]  Service prefix "ml:{KS}:"
-- ARGV[1]  now_ms or ''
-- ARGV[2]  scheduled message sid (KM)
-- ARGV[3]  status: sent | failed | canceled
-- ARGV[4]  reason ('' for sent)
-- ARGV[5]  interaction sid ('' when none)
-- Returns 1, or 0 when the message was not `sending` (already judged: nothing changes).

local now = now_ms(ARGV[1])
local km, status = ARGV[2], ARGV[3]
if redis.call('HGET', P .. 'sm:' .. km, 'status') ~= 'sending' then return 0 end
redis.call('ZREM', P .. 'sending', km)
settle_scheduled(km, status, ARGV[4], now, 'interaction_sid', ARGV[5])
return 1
