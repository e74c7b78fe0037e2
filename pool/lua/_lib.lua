-- Shared helpers, prepended to every script by pool/scripts.py (Redis 6.2 has no FUNCTION LOAD).
--
-- KEYS[1]  the Service prefix "ml:{KS...}:"; every key a script builds starts with it, so every
--          key shares the Service's hash slot (Redis Cluster: one slot per Service).
-- Times are epoch milliseconds. now_ms() takes ARGV[1] when the caller passes an explicit clock
-- (tests) and the server's TIME otherwise, so every worker agrees on one clock.

local P = KEYS[1]

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

local function svc_field(name, default)
  local v = redis.call('HGET', P .. 'svc', name)
  if v == false or v == nil or v == '' then return default end
  return v
end

local function pair_key(identifier, proxy) return P .. 'pair:' .. identifier .. ':' .. proxy end

-- Adjust a number's count of live sessions, in its hash and in the pool zsets it belongs to.
-- ZADD XX INCR never adds a number that left the pool (reserved, or removed meanwhile).
local function bump_in_use(proxy, delta)
  local nk = P .. 'num:' .. proxy
  local f = redis.call('HMGET', nk, 'region', 'area')
  if not f[1] then return end
  redis.call('HINCRBY', nk, 'in_use', delta)
  redis.call('ZADD', P .. 'pool:' .. f[1], 'XX', 'INCR', delta, proxy)
  if f[2] and f[2] ~= '' then
    redis.call('ZADD', P .. 'pool:' .. f[1] .. ':' .. f[2], 'XX', 'INCR', delta, proxy)
  end
end

-- expires_at = min(date_expiry, last activity + ttl); 0 means "never".
local function expires_at(sess)
  local at = 0
  local ttl = tonumber(sess.ttl or '0') or 0
  if ttl > 0 then at = tonumber(sess.last_activity_ms) + ttl * 1000 end
  local de = tonumber(sess.date_expiry_ms or '') or 0
  if de > 0 and (at == 0 or de < at) then at = de end
  return at
end

local function schedule_expiry(sid, sess)
  local at = expires_at(sess)
  redis.call('HSET', P .. 'sess:' .. sid, 'expires_at_ms', at)
  if at > 0 then redis.call('ZADD', P .. 'expiry', at, sid) else redis.call('ZREM', P .. 'expiry', sid) end
  return at
end

-- The stream is registered in `ml:event-streams` when the Service is published (ServiceStore),
-- not here: that set lives in another hash slot, which a script must not touch on Redis Cluster.
local function emit(event_id, etype, now, data)
  redis.call('XADD', P .. 'events', '*', 'id', event_id, 'type', etype,
    'service_sid', string.sub(P, 5, -3), 'ts_ms', now, 'data', cjson.encode(data))
end

local function participant_view(kp)
  return hgetall(P .. 'part:' .. kp)
end

local function session_view(sid)
  local s = hgetall(P .. 'sess:' .. sid)
  if not s then return nil end
  local parts, numbers = {}, {}
  for kp in string.gmatch(s.parts or '', '[^,]+') do
    local p = participant_view(kp)
    if p then
      parts[#parts + 1] = p
      numbers[#numbers + 1] = p.identifier
      numbers[#numbers + 1] = p.proxy_identifier
    end
  end
  s.participants = parts
  s.numbers = numbers
  return s
end

-- Pick a proxy number for `identifier`, or return nil, code, message.
-- The pair (identifier, proxy) must not exist: it exists while a session holds it and during the
-- cool-off after that session closed, so a late caller never reaches a stranger.
local function choose_proxy(identifier, region, area, explicit, geo, selection)
  if explicit ~= '' then
    if redis.call('EXISTS', P .. 'num:' .. explicit) == 0 then
      return nil, 80205, 'ProxyIdentifier ' .. explicit .. ' is not a phone number of this Service'
    end
    if redis.call('EXISTS', pair_key(identifier, explicit)) == 1 then
      return nil, 80604, 'this participant already holds proxy number ' .. explicit ..
        ' in another live or cooling-off session; choose another ProxyIdentifier'
    end
    return explicit
  end

  local pool, scope = P .. 'pool:' .. region, region
  if geo == 'area-code' and area ~= '' then
    pool, scope = pool .. ':' .. area, region .. ':' .. area
  end
  local total = tonumber(redis.call('HGET', P .. 'regions', scope) or '0') or 0
  if total == 0 then
    if scope ~= region then
      return nil, 80206, 'no proxy number in area code ' .. area .. ' (GeoMatchLevel=area-code); add one to the pool'
    end
    return nil, 80203, 'no proxy number for country ' .. region .. ' in this Service; add one to the pool'
  end
  if redis.call('ZCARD', pool) == 0 then
    return nil, 80207, 'every proxy number for ' .. scope ..
      ' is reserved; reserved numbers are only given when named with ProxyIdentifier'
  end

  local function free(num) return redis.call('EXISTS', pair_key(identifier, num)) == 0 end

  local last = redis.call('GET', P .. 'last:' .. identifier)
  if selection == 'prefer-sticky' and last and redis.call('ZSCORE', pool, last) and free(last) then
    return last
  end
  local avoid = nil
  if selection == 'avoid-sticky' and last then avoid = last end

  -- Least used first: the lowest scores of the zset, O(log N), whatever the pool's size.
  for _, num in ipairs(redis.call('ZRANGE', pool, 0, 7)) do
    if num ~= avoid and free(num) then return num end
  end
  -- A participant holding the least-used numbers: sample and take the least loaded free one
  -- (power of choices), still O(1) in the pool's and the participant's size.
  local best, best_score = nil, nil
  for _, num in ipairs(redis.call('ZRANDMEMBER', pool, 16)) do
    if num ~= avoid and free(num) then
      local s = tonumber(redis.call('ZSCORE', pool, num))
      if best == nil or s < best_score then best, best_score = num, s end
    end
  end
  if best then return best end
  -- Near exhaustion for this participant: only now walk the whole pool, to answer exactly.
  local n, i = redis.call('ZCARD', pool), 8
  while i < n do
    for _, num in ipairs(redis.call('ZRANGE', pool, i, i + 255)) do
      if num ~= avoid and free(num) then return num end
    end
    i = i + 256
  end
  if avoid and free(avoid) and redis.call('ZSCORE', pool, avoid) then return avoid end
  return nil, 80208, 'every proxy number for ' .. scope .. ' is already paired with ' .. identifier ..
    ' in another live or cooling-off session; close a session or add numbers'
end

local function hold_pair(identifier, proxy, sid, kp)
  redis.call('SET', pair_key(identifier, proxy), sid .. ':' .. kp)
  redis.call('SET', P .. 'last:' .. identifier, proxy, 'EX', 2592000)
  bump_in_use(proxy, 1)
end

-- Release a participant's pair into cool-off: the key keeps pointing at the closed session for
-- cool_off_ms, then vanishes. Only the holder releases (a pair re-used after cool-off is not ours).
local function release_pair(sid, kp, cool_off_ms)
  local f = redis.call('HMGET', P .. 'part:' .. kp, 'identifier', 'proxy_identifier')
  if not f[1] then return end
  local pk = pair_key(f[1], f[2])
  if redis.call('GET', pk) == sid .. ':' .. kp and redis.call('PTTL', pk) == -1 then
    if cool_off_ms > 0 then redis.call('PEXPIRE', pk, cool_off_ms) else redis.call('DEL', pk) end
    bump_in_use(f[2], -1)
  end
end

local function retain(keys, ms)
  for _, k in ipairs(keys) do redis.call('PEXPIRE', k, ms) end
end

-- Close a live session: release its pairs into cool-off, leave the expiry list, keep the records
-- readable for the retention period. Idempotent: a closed session is left alone (returns false).
local function close_session(sid, reason, now, event_id)
  local sk = P .. 'sess:' .. sid
  local status = redis.call('HGET', sk, 'status')
  if not status or status == 'closed' then return false end
  local cool_off_ms = (tonumber(svc_field('cool_off_s', '0')) or 0) * 1000
  local keep_ms = math.max(cool_off_ms, (tonumber(svc_field('closed_retention_s', '604800')) or 604800) * 1000)
  local parts = redis.call('HGET', sk, 'parts') or ''
  local keys = { sk }
  for kp in string.gmatch(parts, '[^,]+') do
    release_pair(sid, kp, cool_off_ms)
    keys[#keys + 1] = P .. 'part:' .. kp
  end
  redis.call('HSET', sk, 'status', 'closed', 'closed_reason', reason, 'ended_ms', now, 'updated_ms', now,
    'expires_at_ms', 0)
  redis.call('ZREM', P .. 'expiry', sid)
  local uname = redis.call('HGET', sk, 'unique_name')
  if uname and uname ~= '' then keys[#keys + 1] = P .. 'uname:' .. uname end
  keys[#keys + 1] = sk .. ':ix'
  for _, ki in ipairs(redis.call('ZRANGE', sk .. ':ix', 0, -1)) do keys[#keys + 1] = P .. 'ix:' .. ki end
  retain(keys, keep_ms)
  if event_id then emit(event_id, 'session.closed', now, session_view(sid)) end
  return true
end

local function fail(code, message) return cjson.encode({ e = code, m = message }) end
