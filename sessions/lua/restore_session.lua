-- Put one session back into Redis as the audit log last saw it, or set its released pairs cooling
-- off again: the recovery after Redis lost its data (sessions/restore.py, maskline/recovery.py).
-- Idempotent, and never takes what is held: a session Redis already has is left alone, a pair
-- another session holds is skipped (and reported), a cooling pair is only set where none exists.
-- KEYS[1]  Service prefix "ml:{KS}:"
-- ARGV[1]  now_ms or '' (server TIME)
-- ARGV[2]  what: live | cooling
-- ARGV[3]  JSON, every value a string:
--          live     {sid, fields = {unique_name, status, mode, ttl, date_expiry_ms, created_ms,
--                   updated_ms, started_ms, last_activity_ms, last_interaction_ms},
--                   participants = [{sid, identifier, proxy_identifier, friendly_name, created_ms,
--                   updated_ms, pin}]}
--          cooling  {sid, participants = [{sid, identifier, proxy_identifier, until_ms, pin}]}
--          (pin: '' unless the participant is in PIN mode on the Service's FallbackNumber)
-- Returns JSON {outcome, restored = [participant sids], skipped = [{sid, proxy, why}]}:
--   restored  the session hash, the participants whose pair was free (or already theirs), their
--             pairs (in_use counts, last:), uname (unless another session has it), the sessions
--             index and the expiry zset; the hash carries restored_ms
--   exists    Redis holds the session: nothing written
--   expired   its expiry has passed: nothing written (the sweeper would close it at once)
--   closed    a pair of it is cooling off: Redis closed it after the log's last word; nothing written
--   cooling   (what = cooling) `restored`: the participants whose pair now cools off until until_ms
-- skipped.why: held (another session holds the pair) | not_in_pool (the proxy number left the pool).
-- Emits no event: nothing changed but Redis' copy of what the log already holds.

local now = now_ms(ARGV[1])
local s = cjson.decode(ARGV[3])
local sid = s.sid
local restored, skipped = {}, {}
local function done(outcome)
  return cjson.encode({ outcome = outcome, restored = restored, skipped = skipped })
end

if ARGV[2] == 'cooling' then
  for _, p in ipairs(s.participants) do
    local left = math.floor((tonumber(p.until_ms) or 0) - now)
    if left > 0 and redis.call('SET', pair_key(p.identifier, p.proxy_identifier, p.pin), sid .. ':' .. p.sid,
        'PX', left, 'NX') then
      restored[#restored + 1] = p.sid
    end
  end
  return done('cooling')
end

local sk = P .. 'sess:' .. sid
if redis.call('EXISTS', sk) == 1 then return done('exists') end
local f = s.fields
local at = expires_at(f)
if at > 0 and at <= now then return done('expired') end
for _, p in ipairs(s.participants) do
  local pk = pair_key(p.identifier, p.proxy_identifier, p.pin)
  if redis.call('GET', pk) == sid .. ':' .. p.sid and redis.call('PTTL', pk) >= 0 then return done('closed') end
end

local members = {}
for _, p in ipairs(s.participants) do
  local kp, ident, proxy, pin = p.sid, p.identifier, p.proxy_identifier, p.pin or ''
  local holder = redis.call('GET', pair_key(ident, proxy, pin))
  local pn = redis.call('HGET', P .. 'num:' .. proxy, 'sid')
  if not pn then
    skipped[#skipped + 1] = { sid = kp, proxy = proxy, why = 'not_in_pool' }
  elseif holder and not holds(holder, sid, kp) then
    skipped[#skipped + 1] = { sid = kp, proxy = proxy, why = 'held' }
  else
    -- A pair already ours (PTTL -1, checked above) kept its in_use count with it.
    if not holder then hold_pair(ident, proxy, sid, kp, pin) end
    members[#members + 1] = { sid = kp, identifier = ident, proxy_identifier = proxy,
      proxy_identifier_sid = pn, friendly_name = p.friendly_name, pin = pin, created_ms = p.created_ms,
      updated_ms = p.updated_ms }
    restored[#restored + 1] = kp
  end
end

hset_present(sk, 'unique_name', f.unique_name, 'status', f.status, 'mode', unless_default('mode', f.mode),
  'ttl', unless_default('ttl', f.ttl), 'date_expiry_ms', f.date_expiry_ms, 'created_ms', f.created_ms,
  'updated_ms', unless_as_created(f, 'updated_ms'), 'started_ms', unless_as_created(f, 'started_ms'),
  'last_activity_ms', unless_as_created(f, 'last_activity_ms'),
  'last_interaction_ms', f.last_interaction_ms, 'restored_ms', now)
set_members(sid, f.created_ms, members, 0, f.status == 'closed')
redis.call('ZADD', P .. 'sessions', f.created_ms, sid)
if f.unique_name ~= '' then
  local other = redis.call('GET', P .. 'uname:' .. f.unique_name)
  if not other or redis.call('EXISTS', P .. 'sess:' .. other) == 0 then
    redis.call('SET', P .. 'uname:' .. f.unique_name, sid)
  end
end
schedule_expiry(sid, session_record(sid))
return done('restored')
