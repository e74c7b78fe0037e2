-- Delete an interaction from Redis and log interaction.deleted, in one step: of two deletes of the
-- same record one finds nothing (one count less, one event), and no crash removes the record
-- without its event.
-- KEYS[1]  Service prefix "ml:{KS}:"
-- ARGV[1]  now_ms or ''
-- ARGV[2]  event id
-- ARGV[3]  session sid
-- ARGV[4]  interaction sid
-- ARGV[5]  '1': the audit log holds it and Redis may not (past its hot window): deleted all the same
-- Returns 1 if deleted, 0 if Redis holds no such interaction of that session (and ARGV[5] is not '1').

local now = now_ms(ARGV[1])
local sid, ki = ARGV[3], ARGV[4]
local ik = P .. 'ix:' .. ki
local held = redis.call('HGET', ik, 'session_sid') == sid
if not held and ARGV[5] ~= '1' then return 0 end
if held then redis.call('DEL', ik) end
local sk = P .. 'sess:' .. sid
redis.call('ZREM', sk .. ':ix', ki)
-- (`ix_count` counts every interaction of the session, those past their hot window too)
if redis.call('HEXISTS', sk, 'ix_count') == 1 then redis.call('HINCRBY', sk, 'ix_count', -1) end
emit(ARGV[2], 'interaction.deleted', now, { sid = ki, session_sid = sid })
return 1
