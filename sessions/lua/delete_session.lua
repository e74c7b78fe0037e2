-- Delete a session: close it (reason "deleted"; its pairs still cool off, so a late caller cannot
-- reach a stranger), then drop its records from Redis (the audit log keeps the history).
-- KEYS[1]  Service prefix "ml:{KS}:"
-- ARGV[1]  now_ms or ''
-- ARGV[2]  event id base (28 hex): ...0001 for session.closed, ...0002 for session.deleted
-- ARGV[3]  session sid
-- Returns 1, or 0 if there was no such session.

local now = now_ms(ARGV[1])
local sid = ARGV[3]
local sk = P .. 'sess:' .. sid
if redis.call('EXISTS', sk) == 0 then return 0 end
close_session(sid, 'deleted', now, ARGV[2] .. '0001')
local view = session_view(sid)
local uname = redis.call('HGET', sk, 'unique_name')
if uname and uname ~= '' and redis.call('GET', P .. 'uname:' .. uname) == sid then redis.call('DEL', P .. 'uname:' .. uname) end
for _, ki in ipairs(redis.call('ZRANGE', sk .. ':ix', 0, -1)) do redis.call('DEL', P .. 'ix:' .. ki) end
for _, km in ipairs(redis.call('ZRANGE', sk .. ':sm', 0, -1)) do redis.call('DEL', P .. 'sm:' .. km) end
redis.call('DEL', sk, sk .. ':ix', sk .. ':sm')
redis.call('ZREM', P .. 'sessions', sid)
emit(ARGV[2] .. '0002', 'session.deleted', now, view)
return 1
