-- Add one participant to a session.
-- KEYS[1]  Service prefix "ml:{KS}:"
-- ARGV[1]  now_ms or ''
-- ARGV[2]  event id for participant.added
-- ARGV[3]  session sid
-- ARGV[4..10] participant: sid (KP...), identifier, region, area, ProxyIdentifier or '', friendly_name,
--          candidate PINs (comma separated: PIN mode, _pool.lua's choose_or_pin)
-- Returns JSON: the participant, or {e=code, m=message}.

local now = now_ms(ARGV[1])
local sid = ARGV[3]
local sk = P .. 'sess:' .. sid
local sess, members = session_record(sid)
if not sess then return fail(20404, 'Session ' .. sid .. ' was not found') end
if sess.status == 'closed' then return fail(80607, 'Session ' .. sid .. ' is closed; participants cannot be added') end
local kp, ident, region, area, explicit, name = ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local count = #members
for _, other in ipairs(members) do
  if other.identifier == ident then
    return fail(80103, 'participant ' .. ident .. ' is already in Session ' .. sid)
  end
end
local most = tonumber(svc_field('max_participants', '2')) or 2
if count >= most then
  return fail(80609, 'Session ' .. sid .. ' already has ' .. count .. ' participants (at most ' .. most ..
    ' in this Service: MaxParticipants)')
end
if redis.call('SISMEMBER', P .. 'blocked', bare(ident)) == 1 then
  return fail(89003, 'participant ' .. ident .. ' is blocked in this Service')
end
local countries = svc_field('allowed_countries', '')
if countries ~= '' and not string.find(countries, ',' .. region .. ',', 1, true) then
  return fail(89002, 'participants from ' .. region .. ' are not allowed in this Service (allowed: ' ..
    string.sub(countries, 2, -2) .. ')')
end
local proxy, pin, msg = choose_or_pin(ident, region, area, explicit,
  svc_field('geo_match_level', 'country'), svc_field('number_selection_behavior', 'prefer-sticky'), ARGV[10])
if not proxy then return fail(pin, msg) end
hold_pair(ident, proxy, sid, kp, pin)
members[#members + 1] = { sid = kp, identifier = ident, proxy_identifier = proxy,
  friendly_name = name, pin = pin, created_ms = now, updated_ms = now }  -- (PN sid: the pool's)
set_members(sid, sess.created_ms, members, 0, false)
redis.call('HSET', sk, 'updated_ms', now)
local p = participant_view(sid, kp)
emit(ARGV[2], 'participant.added', now, { session_sid = sid, participant = p,
  numbers = { ident, proxy } })
return cjson.encode(p)
