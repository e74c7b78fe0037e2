-- Create a session and its participants (0 to the Service's max_participants: 2 unless set) in one atomic step.
-- KEYS[1]  Service prefix "ml:{KS}:"
-- ARGV[1]  now_ms or '' (server TIME)
-- ARGV[2]  event id for session.created
-- ARGV[3]  session sid (KC...)
-- ARGV[4]  unique_name or ''
-- ARGV[5]  mode (message-only | voice-only | voice-and-message)
-- ARGV[6]  status (open | in-progress)
-- ARGV[7]  ttl_s or '' (Service DefaultTtl)
-- ARGV[8]  date_expiry_ms or ''
-- ARGV[9]  number of participants n; then 7 values per participant:
--          sid (KP...), identifier (E.164), region, area, ProxyIdentifier or '', friendly_name,
--          candidate PINs (comma separated: PIN mode, _pool.lua's choose_or_pin)
-- Returns JSON: the session view ({sid=..., participants=[...]}) or {e=code, m=message}.
-- Nothing is written unless every participant got a number: all checks run before any write.

local now = now_ms(ARGV[1])
local sid = ARGV[3]
if redis.call('EXISTS', P .. 'svc') == 0 then
  return fail(20404, 'Service ' .. string.sub(P, 5, -3) .. ' was not found')
end
local uname = ARGV[4]
if uname ~= '' then
  local holder = redis.call('GET', P .. 'uname:' .. uname)
  if holder and redis.call('EXISTS', P .. 'sess:' .. holder) == 1 then
    return fail(80603, 'a Session with UniqueName ' .. uname .. ' already exists in this Service: ' .. holder)
  end
end

local geo = svc_field('geo_match_level', 'country')
local selection = svc_field('number_selection_behavior', 'prefer-sticky')
local countries = svc_field('allowed_countries', '')
local n = tonumber(ARGV[9])
local most = tonumber(svc_field('max_participants', '2')) or 2
if n > most then
  return fail(80609, 'a Session may have at most ' .. most .. ' participants in this Service (MaxParticipants)')
end
local chosen, seen = {}, {}
for i = 0, n - 1 do
  local b = 10 + i * 7
  local kp, ident, region, area, explicit = ARGV[b], ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
  if seen[ident] then return fail(80103, 'participant ' .. ident .. ' appears twice in this Session') end
  seen[ident] = true
  if redis.call('SISMEMBER', P .. 'blocked', bare(ident)) == 1 then
    return fail(89003, 'participant ' .. ident .. ' is blocked in this Service')
  end
  if countries ~= '' and not string.find(countries, ',' .. region .. ',', 1, true) then
    return fail(89002, 'participants from ' .. region .. ' are not allowed in this Service (allowed: ' ..
      string.sub(countries, 2, -2) .. ')')
  end
  local proxy, pin, msg = choose_or_pin(ident, region, area, explicit, geo, selection, ARGV[b + 6])
  if not proxy then return fail(pin, msg) end
  chosen[#chosen + 1] = { kp = kp, ident = ident, proxy = proxy, name = ARGV[b + 5], pin = pin }
end

local ttl = ARGV[7]
if ttl == '' then ttl = svc_field('default_ttl_s', '0') end
local members = {}
for _, c in ipairs(chosen) do
  hold_pair(c.ident, c.proxy, sid, c.kp, c.pin)
  members[#members + 1] = { sid = c.kp, identifier = c.ident, proxy_identifier = c.proxy,
    friendly_name = c.name, pin = c.pin, created_ms = now, updated_ms = now }  -- (PN sid: the pool's)
end
local sk = P .. 'sess:' .. sid
hset_present(sk, 'unique_name', uname, 'status', ARGV[6], 'mode', unless_default('mode', ARGV[5]),
  'ttl', unless_default('ttl', ttl),
  'date_expiry_ms', ARGV[8], 'created_ms', now)  -- (updated, started, last activity: SESSION_AS_CREATED)
set_members(sid, now, members, 0, false)
redis.call('ZADD', P .. 'sessions', now, sid)
if uname ~= '' then redis.call('SET', P .. 'uname:' .. uname, sid) end
schedule_expiry(sid, session_record(sid))
local view = session_view(sid)
emit(ARGV[2], 'session.created', now, view)
return cjson.encode(view)
