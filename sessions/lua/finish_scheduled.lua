-- Record how a claimed scheduled message ended: sent (with its interaction), failed or canceled;
-- for a sent one, Twilio's answer to the send applied to its interaction in the same step
-- (apply_interaction_update: one round trip instead of update_interaction.lua, then this).
-- KEYS[1]  Service prefix "ml:{KS}:"
-- ARGV[1]  now_ms or ''
-- ARGV[2]  scheduled message sid (KM)
-- ARGV[3]  status: sent | failed | canceled
-- ARGV[4]  reason ('' for sent)
-- ARGV[5]  interaction sid ('' when none)
-- ARGV[6]  Twilio's Message sid for the interaction, or '' (then ARGV[7..9] are not read)
-- ARGV[7]  Twilio's status for it (queued, ...)
-- ARGV[8]  event id for the interaction's interaction.updated
-- ARGV[9]  ms Redis keeps the interaction record after this change, at least (its hot window)
-- ARGV[10] the caller's deadline (core/lua/_lib.lua)
-- Returns 1, or 0 when the message was not `sending` (already judged: nothing changes but the
-- interaction, which Twilio did answer).

local now = now_ms(ARGV[1])
local km, status = ARGV[2], ARGV[3]
if ARGV[6] ~= '' and ARGV[5] ~= '' then
  apply_interaction_update(ARGV[5], ARGV[6], ARGV[7], '', '', ARGV[8], ARGV[9], '', now)
end
if redis.call('HGET', P .. 'sm:' .. km, 'status') ~= 'sending' then return 0 end
redis.call('ZREM', P .. 'sending', km)
settle_scheduled(km, status, ARGV[4], now, 'interaction_sid', ARGV[5])
return 1
