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
local key = P .. 'sm:' .. km
if redis.call('HGET', key, 'status') ~= 'sending' then return 0 end
redis.call('HSET', key, 'status', status, 'reason', ARGV[4], 'interaction_sid', ARGV[5], 'updated_ms', now)
redis.call('ZREM', P .. 'sending', km)
local view = hgetall(key)
local part = hgetall(P .. 'part:' .. view.participant_sid) or {}
view.numbers = { part.identifier, part.proxy_identifier }
emit('EV' .. string.sub(redis.sha1hex(km .. ':' .. status), 1, 32), 'scheduled_message.' .. status, now, view)
return 1
