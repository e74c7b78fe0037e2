-- Free a (identifier, proxy) pair that is cooling off after its session closed, so an
-- out-of-session auto-create can give the caller the number they dialled. Only a pair that still
-- points at a closed session is released (a live one is never touched).
-- KEYS[1]  Service prefix "ml:{KS}:"
-- ARGV[1]  identifier (E.164)
-- ARGV[2]  proxy number (E.164)
-- Returns 1 if released, else 0.

local pk = pair_key(ARGV[1], ARGV[2])
local holder = redis.call('GET', pk)
if not holder then return 0 end
local sid = string.match(holder, '^([^:]+)')
local status = redis.call('HGET', P .. 'sess:' .. sid, 'status')
if status and status ~= 'closed' then return 0 end
redis.call('DEL', pk)
redis.call('ZREM', P .. 'cooling', ARGV[2] .. ' ' .. (string.match(holder, ':(.+)$') or ''))
return 1
