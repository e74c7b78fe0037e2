-- Shared helpers of every script, prepended by the loader (core/scripts.py; Redis 6.2 has no
-- FUNCTION LOAD). The pool's helpers (pool/lua/_pool.lua) and the session helpers
-- (sessions/lua/_session.lua) follow it, in that order, for the scripts that need them.
--
-- KEYS[1]  the Service prefix "ml:{KS...}:"; every key a script builds starts with it, so every
--          key shares the Service's hash slot (Redis Cluster: one slot per Service). The key
--          shapes are listed, and built for Python, in core/keys.py.
-- ARGV[#ARGV]  the caller's deadline, epoch ms, or '' (every script gets it last: core/scripts.py).
-- Times are epoch milliseconds. now_ms() takes ARGV[1] when the caller passes an explicit clock
-- (tests) and the server's TIME otherwise, so every worker agrees on one clock.

local P = KEYS[1]

-- A script that starts after its caller's deadline does nothing: the caller has already answered
-- "failed" (a stalled Redis runs the commands queued for it when it wakes up). Checked against
-- the server's real clock, before any write (core/deadline.py).
do
  local deadline = tonumber(ARGV[#ARGV])
  if deadline then
    local t = redis.call('TIME')
    if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > deadline then
      return redis.error_reply('DEADLINE the caller gave up before this script started')
    end
  end
end

local function now_ms(arg)
  if arg and arg ~= '' then return tonumber(arg) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function hgetall(key)
  local flat = redis.call('HGETALL', key)
  if #flat == 0 then return nil end
  local h = {}
  for i = 1, #flat, 2 do h[flat[i]] = flat[i + 1] end
  return h
end

-- One field of the Service's settings hash (`svc`, written by sessions/services.py).
local function svc_field(name, default)
  local v = redis.call('HGET', P .. 'svc', name)
  if v == false or v == nil or v == '' then return default end
  return v
end

-- The stream is registered in `ml:event-streams` when the Service is published (ServiceStore),
-- not here: that set lives in another hash slot, which a script must not touch on Redis Cluster.
local function emit(event_id, etype, now, data)
  redis.call('XADD', P .. 'events', '*', 'id', event_id, 'type', etype,
    'service_sid', string.sub(P, 5, -3), 'ts_ms', now, 'data', cjson.encode(data))
end

local function fail(code, message) return cjson.encode({ e = code, m = message }) end
