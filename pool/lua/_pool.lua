-- The pool's helpers: choosing a proxy number, holding and releasing (identifier, proxy) pairs.
-- Prepended after core/lua/_lib.lua to the pool's scripts and to the session scripts that
-- allocate numbers (create_session, add_participant, update_session...).
-- Keys (core/keys.py): `num:{E164}` hash, `pool:{REGION}[:{AREA}]` zset (score = live sessions),
-- `regions` hash (counts), `pair:{identifier}:{proxy}` string "KC:KP", `last:{period}` hash.
-- PIN mode (the Service's shared FallbackNumber, when the pool has no number left for a
-- participant): the pair is `pair:{identifier}:{shared}#{PIN}`, and `pins:{identifier}:{shared}`
-- is the set of the participant's live PINs on that number.

local function pair_key(identifier, proxy, pin)
  if pin and pin ~= '' then return P .. 'pair:' .. identifier .. ':' .. proxy .. '#' .. pin end
  return P .. 'pair:' .. identifier .. ':' .. proxy
end
local function pins_key(identifier, proxy) return P .. 'pins:' .. identifier .. ':' .. proxy end

-- The pool scopes a number belongs to: its region, its region:area (NANP), and `whatsapp` for a
-- number that can carry WhatsApp (`wa` = '1'): WhatsApp participants get numbers from that scope,
-- whatever their country. Each scope has a zset `pool:{scope}` and counts in `regions`.
local function number_scopes(region, area, wa)
  local scopes = { region }
  if area and area ~= '' then scopes[#scopes + 1] = region .. ':' .. area end
  if wa == '1' then scopes[#scopes + 1] = 'whatsapp' end
  return scopes
end

-- A WhatsApp participant ("whatsapp:+E164", Twilio's channel address) or a phone number.
local function is_whatsapp(identifier) return string.sub(identifier, 1, 9) == 'whatsapp:' end
-- The phone number under a channel address (block lists hold phone numbers).
local function bare(identifier)
  if is_whatsapp(identifier) then return string.sub(identifier, 10) end
  return identifier
end
-- Whether `identifier` can be given number `num`: any number for a phone, a number added with
-- WhatsApp=true for a WhatsApp participant.
local function reaches(identifier, num)
  return not is_whatsapp(identifier) or redis.call('HGET', P .. 'num:' .. num, 'wa') == '1'
end

-- The proxy number last given to each participant (prefer-sticky / avoid-sticky): one hash per
-- 30-day period, `last:{period}` (field identifier, value proxy number), that expires at the end
-- of the next period, so a hint lives 30 to 60 days. A hash field costs Redis about a third of
-- what a key per participant did (docs/design.md).
local STICKY_PERIOD_S = 2592000
local function sticky_period()
  return math.floor(tonumber(redis.call('TIME')[1]) / STICKY_PERIOD_S)
end
local function sticky_proxy(identifier)
  local period = sticky_period()
  return redis.call('HGET', P .. 'last:' .. period, identifier) or
    redis.call('HGET', P .. 'last:' .. (period - 1), identifier)
end
local function remember_sticky(identifier, proxy)
  local period = sticky_period()
  local key = P .. 'last:' .. period
  if redis.call('HSET', key, identifier, proxy) == 1 and redis.call('TTL', key) == -1 then
    redis.call('EXPIREAT', key, (period + 2) * STICKY_PERIOD_S)
  end
end

-- Adjust a number's count of live sessions, in its hash and in the pool zsets it belongs to.
-- ZADD XX INCR never adds a number that left the pool (reserved, or removed meanwhile).
local function bump_in_use(proxy, delta)
  local nk = P .. 'num:' .. proxy
  local f = redis.call('HMGET', nk, 'region', 'area', 'wa')
  if not f[1] then return end
  redis.call('HINCRBY', nk, 'in_use', delta)
  for _, scope in ipairs(number_scopes(f[1], f[2], f[3])) do
    redis.call('ZADD', P .. 'pool:' .. scope, 'XX', 'INCR', delta, proxy)
  end
end

-- Pick a proxy number for `identifier`, or return nil, code, message.
-- The pair (identifier, proxy) must not exist: it exists while a session holds it and during the
-- cool-off after that session closed, so a late caller never reaches a stranger.
-- The pool had no number left for a participant (80207, 80208): counted per hour in
-- `exhausted` (the console's chart), kept two days. A statistic, written although the script
-- that called choose_proxy then changes nothing else.
local function note_exhausted()
  local hour = math.floor(tonumber(redis.call('TIME')[1]) / 3600)
  redis.call('HINCRBY', P .. 'exhausted', hour, 1)
  redis.call('EXPIRE', P .. 'exhausted', 172800)
end

-- `shared`: the Service's FallbackNumber ('' for none), never given here.
local function choose_proxy(identifier, region, area, explicit, geo, selection, shared)
  if explicit ~= '' and explicit == shared then
    return nil, 89006, 'ProxyIdentifier ' .. explicit .. ' is the Service\'s shared FallbackNumber: it is ' ..
      'given, with a PIN, only when no other number is free for the participant'
  end
  if explicit ~= '' then
    if redis.call('EXISTS', P .. 'num:' .. explicit) == 0 then
      return nil, 80605, 'ProxyIdentifier ' .. explicit .. ' is not a phone number of this Service'
    end
    if not reaches(identifier, explicit) then
      return nil, 89007, 'ProxyIdentifier ' .. explicit .. ' cannot carry WhatsApp (add it with WhatsApp=true) ' ..
        'and ' .. identifier .. ' is a WhatsApp participant'
    end
    if redis.call('EXISTS', pair_key(identifier, explicit)) == 1 then
      return nil, 80604, 'this participant already holds proxy number ' .. explicit ..
        ' in another live or cooling-off session; choose another ProxyIdentifier'
    end
    return explicit
  end

  if is_whatsapp(identifier) then region, area = 'whatsapp', '' end
  local pool, scope = P .. 'pool:' .. region, region
  if geo == 'area-code' and area ~= '' then
    pool, scope = pool .. ':' .. area, region .. ':' .. area
  end
  local total = tonumber(redis.call('HGET', P .. 'regions', scope) or '0') or 0
  if total == 0 then
    if redis.call('HLEN', P .. 'regions') == 0 then
      return nil, 80205, 'this Service has no proxy numbers; add some to its pool (PhoneNumbers)'
    end
    if region == 'whatsapp' then
      return nil, 80203, 'no proxy number of this Service can carry WhatsApp; add one with WhatsApp=true'
    end
    if scope ~= region then
      return nil, 80206, 'no proxy number in area code ' .. area .. ' (GeoMatchLevel=area-code); add one to the pool'
    end
    return nil, 80203, 'no proxy number for country ' .. region .. ' in this Service; add one to the pool'
  end
  if redis.call('ZCARD', pool) == 0 then
    note_exhausted()
    return nil, 80207, 'every proxy number for ' .. scope ..
      ' is reserved; reserved numbers are only given when named with ProxyIdentifier'
  end

  local function free(num) return num ~= shared and redis.call('EXISTS', pair_key(identifier, num)) == 0 end

  local last = sticky_proxy(identifier)
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
  note_exhausted()
  return nil, 80208, 'every proxy number for ' .. scope .. ' is already paired with ' .. identifier ..
    ' in another live or cooling-off session; close a session or add numbers'
end

-- choose_proxy, or PIN mode: when every number is paired with `identifier` (80208) and the
-- Service has a FallbackNumber, the shared number and the first of `pins` (candidates, comma
-- separated, drawn at random by the caller) that `identifier` holds on it in no live or cooling
-- session. Returns proxy, pin ('' for a number of its own) or nil, code, message.
local function choose_or_pin(identifier, region, area, explicit, geo, selection, pins)
  local shared = svc_field('fallback_number', '')
  local proxy, code, msg = choose_proxy(identifier, region, area, explicit, geo, selection, shared)
  if proxy then return proxy, '' end
  if code ~= 80208 or shared == '' or redis.call('EXISTS', P .. 'num:' .. shared) == 0 or
     not reaches(identifier, shared) then
    return nil, code, msg
  end
  for pin in string.gmatch(pins or '', '%d+') do
    if redis.call('EXISTS', pair_key(identifier, shared, pin)) == 0 then return shared, pin end
  end
  return nil, code, msg .. ', and no PIN on the FallbackNumber is free for it'
end

-- A pair's value: the session's sid while the session holds it (34 bytes: Redis stores it with
-- its key's object, 32 bytes less than `KC...:KP...`; the participant is the one with that
-- identifier, which a session has once), `KC...:KP...` while it cools off (release_pair), as every
-- pair did before 2026-12.
local function holds(value, sid, kp)
  return value == sid or value == sid .. ':' .. kp
end

local function hold_pair(identifier, proxy, sid, kp, pin)
  redis.call('SET', pair_key(identifier, proxy, pin), sid)
  if pin and pin ~= '' then
    redis.call('SADD', pins_key(identifier, proxy), pin)
  else
    remember_sticky(identifier, proxy)
  end
  bump_in_use(proxy, 1)
end

-- Release participant `kp`'s pair (its identifier, proxy number and PIN or nil) into cool-off:
-- the key keeps pointing at the closed session for cool_off_ms, then vanishes. Only the holder
-- releases (a pair re-used after cool-off is not ours).
local function release_pair(sid, kp, identifier, proxy, pin, cool_off_ms)
  if not identifier or not proxy then return end
  local pk = pair_key(identifier, proxy, pin)
  if holds(redis.call('GET', pk), sid, kp) and redis.call('PTTL', pk) == -1 then
    if pin and pin ~= '' then redis.call('SREM', pins_key(identifier, proxy), pin) end
    if cool_off_ms > 0 then
      redis.call('SET', pk, sid .. ':' .. kp, 'PX', cool_off_ms)
      -- The console's count of cooling pairs per number: "proxy KP" until the cool-off ends (no
      -- participant number here: erasure need not look for it).
      local t = redis.call('TIME')
      local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
      redis.call('ZREMRANGEBYSCORE', P .. 'cooling', '-inf', now)
      redis.call('ZADD', P .. 'cooling', now + cool_off_ms, proxy .. ' ' .. kp)
    else
      redis.call('DEL', pk)
    end
    bump_in_use(proxy, -1)
  end
end
