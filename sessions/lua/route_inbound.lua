-- Route one inbound text or call by its (From, To) pair, in one round trip: de-duplicate Twilio's
-- retries, find the live session, refuse what the session's mode or an opt-out forbids, restart
-- the TTL, record the interaction and emit its event.
-- KEYS[1]  Service prefix "ml:{KS}:"
-- ARGV[1]  now_ms or ''
-- ARGV[2]  event id for interaction.created (derived from the interaction sid: core/ids.py)
-- ARGV[3]  From (E.164)       ARGV[4] To (the proxy number, E.164)
-- ARGV[5]  kind: message | voice
-- ARGV[6]  Twilio's MessageSid / CallSid (de-duplication key; '' is never de-duplicated)
-- ARGV[7]  interaction sid to create (KI...)
-- ARGV[8]  keyword: '' | optout | optin | help   (decided by the caller from the body)
-- ARGV[9]  interaction data (JSON text: body, media, ... as Twilio Proxy shows `data`)
-- ARGV[10] seconds to remember a MessageSid / CallSid (Twilio retries within minutes)
-- ARGV[11] the PIN the sender gave, or '': a text's leading 4 digits, a call's Gather Digits
--          (only read when To is the Service's shared FallbackNumber: PIN mode)
-- ARGV[12] ms Redis keeps the interaction record (its hot window; then the audit log has it)
-- ARGV[13] the caller's deadline (core/lua/_lib.lua)
-- Returns JSON with `outcome`:
--   duplicate   {replay, interaction, outbound}  a retry: render the first answer again. The
--               `seen:` key holds the interaction sid while the first is in flight, then
--               "<replay>:<KI>" (sessions.models.Replay): never a number or a body.
--   no_session  {previous}                     no live session for the pair (previous: the closed one, if any);
--               {sender_blocked=true}          From is on the Service's block list: out of session, whatever its pairs
--               {pin='unknown'}                To is the shared FallbackNumber and From holds no PIN on it
--   pin         {pin=needed|wrong|locked, attempts}  PIN mode, no session chosen: ask for the PIN
--               (needed, wrong) or refuse (locked); wrong and locked attempts emit pin.failed /
--               pin.locked. The MessageSid / CallSid is forgotten: the next request is routed afresh
--               (a call's Gather posts again with the same CallSid and the Digits)
--   mode        {session}                      the session's mode refuses this kind
--   keyword     {keyword, ...relay fields}     STOP / START / HELP: never relayed; recorded
--   blocked     {...relay fields}              the recipient opted out of texts from that number
--   outside_window {...relay fields}          every recipient is a WhatsApp participant outside its
--               24-hour window (no message from them to their proxy number in 24 h): never
--               relayed (Twilio would refuse it: 63016); recorded, the sender is told
--   rate_limited {...relay fields}             the sender or the proxy number is over the
--               Service's limits (texts per minute, calls per hour): never relayed; recorded, and
--               an interaction.rate_limited event besides interaction.created
--   relay       {session = {sid, status, mode}, inbound, outbound, interaction}; a text in a session of more than two
--               participants also carries `legs`: [{participant, interaction}] for every other
--               participant who has not opted out (one interaction each; the first is `interaction`)
--   (keyword, blocked and relay also carry `interaction`: the record as stored; relay carries
--   `outside_window`: how many other recipients were left out for their closed WhatsApp window)
-- Every outcome carries `svc`: the Service's relay settings by name (RELAY_SETTING_FIELDS, false
-- when unset), so the webhook needs no second round trip.

local now = now_ms(ARGV[1])
local from, to, kind, resource, ki, keyword = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]

-- The Service's relay settings and abuse limits, read once (one HMGET) for every outcome.
local svc = relay_settings('limits')
local limits_spec = svc.limits
svc.limits = nil

local function done(t)
  t.svc = svc
  return cjson.encode(t)
end

local function duplicate(value)
  local replay, first = string.match(value, '^([a-z]*):(KI%x+)$')
  local t = { outcome = 'duplicate', replay = replay or '' }
  local ix = first and interaction_stored(first)
  if ix then
    t.interaction = ix
    if ix.outbound_participant_sid and ix.outbound_participant_sid ~= '' then
      t.outbound = participant_view(ix.session_sid, ix.outbound_participant_sid)
    end
    local legs, j = {}, 2
    while true do  -- the other legs of a text to several participants
      local leg = interaction_stored(leg_sid(first, j))
      if not leg then break end
      legs[#legs + 1] = {
        participant = participant_view(leg.session_sid, leg.outbound_participant_sid), interaction = leg,
      }
      j = j + 1
    end
    if #legs > 0 then
      table.insert(legs, 1, { participant = t.outbound, interaction = ix })
      t.legs = legs
    end
    -- (its name prefixes the text again; its PIN is left out of it again)
    if (ix.inbound_participant_sid or '') ~= '' then
      t.inbound = participant_view(ix.session_sid, ix.inbound_participant_sid)
    end
  end
  return done(t)
end

if resource ~= '' then
  local seen = P .. 'seen:' .. resource
  local value = redis.call('GET', seen)
  if value then return duplicate(value) end
  redis.call('SET', seen, ':' .. ki, 'EX', tonumber(ARGV[10]))
end

if redis.call('SISMEMBER', P .. 'blocked', bare(from)) == 1 then
  return done({ outcome = 'no_session', sender_blocked = true })
end
-- A WhatsApp user who writes to a number opens (or renews) WhatsApp's 24-hour window for free-form
-- messages from that number to them.
if kind == 'message' and is_whatsapp(from) then
  redis.call('SET', window_key(from, to), now, 'PX', 86400000)
end
-- PIN mode: `to` is the Service's shared FallbackNumber. From's live PINs on it decide: none,
-- never connected; locked out after wrong PINs, refused; the PIN given, that session; one live PIN
-- and no right PIN given, that session (a text's leading digits are then its own words);
-- otherwise ask for the PIN, counting a wrong one (PIN_TRIES in a row lock From out for PIN_LOCK_MS).
local PIN_TRIES, PIN_LOCK_MS = 5, 900000
local function by_pin(given)
  local pins = redis.call('SMEMBERS', pins_key(from, to))
  if #pins == 0 then return nil, { outcome = 'no_session', pin = 'unknown' } end
  local lock, tries = P .. 'pinlock:' .. from .. ':' .. to, P .. 'pintries:' .. from .. ':' .. to
  if redis.call('EXISTS', lock) == 1 then
    if given ~= '' then emit(ARGV[2], 'pin.locked', now, { kind = kind, numbers = { from, to } }) end
    return nil, { outcome = 'pin', pin = 'locked' }
  end
  if given ~= '' then
    local h = redis.call('GET', pair_key(from, to, given))
    if h then
      redis.call('DEL', tries)
      return h
    end
  end
  if #pins == 1 and (given == '' or kind == 'message') then
    return redis.call('GET', pair_key(from, to, pins[1]))
  end
  if given == '' then return nil, { outcome = 'pin', pin = 'needed' } end
  local n = redis.call('INCR', tries)
  redis.call('PEXPIRE', tries, PIN_LOCK_MS)
  local status = 'wrong'
  if n >= PIN_TRIES then
    redis.call('SET', lock, now, 'PX', PIN_LOCK_MS)
    redis.call('DEL', tries)
    status = 'locked'
  end
  emit(ARGV[2], 'pin.failed', now, { kind = kind, attempt = n, locked = status == 'locked', numbers = { from, to } })
  return nil, { outcome = 'pin', pin = status, attempts = n }
end

local holder = redis.call('GET', pair_key(from, to))
if not holder and to == redis.call('HGET', P .. 'svc', 'fallback_number') then
  local answer
  holder, answer = by_pin(ARGV[11])
  if answer then
    if resource ~= '' then redis.call('DEL', P .. 'seen:' .. resource) end
    return done(answer)
  end
end
if not holder then return done({ outcome = 'no_session' }) end
-- (the session's sid; `sid:KP` while the pair cools off: _pool.lua, holds)
local sid, kp = string.match(holder, '^([^:]+):?(.*)$')
local sk = P .. 'sess:' .. sid
local sess, members = session_record(sid)
local inbound, others = nil, {}
for _, p in ipairs(members or {}) do
  if p.identifier == from then inbound = p else others[#others + 1] = p end
end
local live = sess and sess.status ~= 'closed' and inbound and (kp == '' or inbound.sid == kp)
if live then
  local at = tonumber(sess.expires_at_ms or '0') or 0
  if at > 0 and at <= now then
    -- Due but not yet swept: close it now rather than relay on an expired session.
    local de = tonumber(sess.date_expiry_ms or '') or 0
    -- (its close event takes a sibling id: this call emits no interaction event)
    close_session(sid, (de > 0 and de <= now) and 'expiry' or 'ttl', now, string.sub(ARGV[2], 1, -2) .. (string.sub(ARGV[2], -1) == '0' and '1' or '0'))
    live = false
  end
end
if not live then
  return done({ outcome = 'no_session', previous = sess and session_view(sid) or cjson.null })
end
kp = inbound.sid

if #others == 0 then
  return done({ outcome = 'no_session', previous = session_view(sid) })
end
-- Two participants: the other one. More: a text goes to every other participant (legs below); a
-- call to the first of them to have joined (docs/relay.md says why).
local outbound = others[1]
-- A WhatsApp participant cannot be called (nor call): voice is refused as by a message-only session.
if (kind == 'voice' and (sess.mode == 'message-only' or is_whatsapp(outbound.identifier) or is_whatsapp(from))) or
   (kind == 'message' and sess.mode == 'voice-only') then
  return done({ outcome = 'mode', session = sess })
end

local outcome, outside_window = 'relay', 0
if kind == 'message' then
  if keyword == 'optout' then
    redis.call('SET', P .. 'optout:' .. from .. ':' .. to, now)
    cancel_scheduled(sid, 'opted_out', now, kp)
    outcome = 'keyword'
  elseif keyword == 'optin' then
    redis.call('DEL', P .. 'optout:' .. from .. ':' .. to)
    outcome = 'keyword'
  elseif keyword == 'help' then
    outcome = 'keyword'
  else
    -- Recipients: every other participant who has not opted out of texts from their proxy number
    -- and, on WhatsApp, is inside the 24-hour window with it.
    local recipients = {}
    for _, o in ipairs(others) do
      if redis.call('EXISTS', P .. 'optout:' .. o.identifier .. ':' .. o.proxy_identifier) == 0 then
        if not window_open(o.identifier, o.proxy_identifier) then
          outside_window = outside_window + 1
        else
          recipients[#recipients + 1] = o
        end
      end
    end
    if #recipients == 0 then
      outcome = outside_window > 0 and 'outside_window' or 'blocked'
    else
      others = recipients
      outbound = recipients[1]
    end
  end
end

-- Abuse limits (the Service's `limits`: "texts/min,calls/h per participant number,texts/min,
-- calls/h per proxy number", 0 = none): fixed windows counted here, in the routing call itself,
-- in one hash per kind and window (fields `p:{From}` and `n:{To}`) that expires when its window
-- ends. Every attempt counts, refused ones too: a flood stays refused until its window ends.
local function over_limit()
  if not limits_spec or limits_spec == '' then return false end
  local tpm, cph, ptpm, pcph = string.match(limits_spec, '^(%d+),(%d+),(%d+),(%d+)$')
  if not tpm then return false end
  local per_from, per_to, window = tonumber(cph), tonumber(pcph), 3600000
  if kind == 'message' then per_from, per_to, window = tonumber(tpm), tonumber(ptpm), 60000 end
  if per_from == 0 and per_to == 0 then return false end
  local slot = math.floor(now / window)
  local k = P .. 'rl:' .. kind .. ':' .. slot
  local n_from = per_from > 0 and redis.call('HINCRBY', k, 'p:' .. from, 1) or 0
  local n_to = per_to > 0 and redis.call('HINCRBY', k, 'n:' .. to, 1) or 0
  -- (a field new to the hash: the hash may be new too; its life is what is left of the window)
  if n_from == 1 or n_to == 1 then redis.call('PEXPIRE', k, (slot + 1) * window - now) end
  return (per_from > 0 and n_from > per_from) or (per_to > 0 and n_to > per_to)
end
if outcome == 'relay' and over_limit() then outcome = 'rate_limited' end

-- The session is in use: in-progress, and its TTL counts from now.
if sess.status == 'open' then
  redis.call('HSET', sk, 'status', 'in-progress', 'last_interaction_ms', now, 'last_activity_ms', now,
    'updated_ms', now)
else
  redis.call('HSET', sk, 'last_interaction_ms', now, 'last_activity_ms', now, 'updated_ms', now)
end
sess.last_activity_ms = now
schedule_expiry(sid, sess)

local message = kind == 'message'
-- One interaction per recipient: a call, or a text in a two-party session, has one; a text in a
-- larger session one per other participant (legs 2.. take sids derived from the first's).
local targets = { outbound }
if message and #others > 1 and outcome ~= 'blocked' and outcome ~= 'outside_window' then targets = others end
local legs, ix = {}, nil
for j, target in ipairs(targets) do
  local leg = j == 1 and ki or leg_sid(ki, j)
  local recorded = record_interaction(leg, {
    sid = leg, session_sid = sid, type = kind, data = ARGV[9], outcome = outcome, origin = 'inbound',
    inbound_participant_sid = kp, inbound_resource_sid = resource,
    inbound_resource_status = message and 'received' or 'in-progress',
    inbound_resource_type = message and 'Message' or 'Call',
    outbound_participant_sid = target.sid,
    outbound_resource_status = outcome == 'relay' and 'initiated' or 'failed',
    outbound_resource_type = message and 'Message' or 'Call',
    created_ms = now, updated_ms = now,
  }, now, tonumber(ARGV[12]))
  if j == 1 then ix = recorded end
  legs[#legs + 1] = { participant = target, interaction = recorded }
  -- The event: the record with the real numbers it concerns (design.md, "Events"), which the
  -- answer does not carry.
  recorded.numbers = { from, to, target.identifier, target.proxy_identifier }
  recorded.inbound_identifier, recorded.outbound_identifier = from, target.identifier
  emit(j == 1 and ARGV[2] or ('EV' .. string.sub(leg, 3)), 'interaction.created', now, recorded)
  recorded.numbers, recorded.inbound_identifier, recorded.outbound_identifier = nil, nil, nil
end
if outcome == 'rate_limited' then
  -- its own event (a sibling id of the interaction's event), for the audit log and alerts
  emit(string.sub(ARGV[2], 1, -2) .. (string.sub(ARGV[2], -1) == '0' and '1' or '0'), 'interaction.rate_limited',
    now, { interaction_sid = ki, session_sid = sid, kind = kind, numbers = { from, to } })
end
-- Until the webhook answers, the relay is in flight: settle_unanswered.lua judges it after its
-- deadline (a worker killed before answering never relayed it).
if resource ~= '' then
  for _, leg in ipairs(legs) do
    redis.call('ZADD', P .. 'inflight', tonumber(ARGV[#ARGV]) or (now + 5000), leg.interaction.sid)
  end
end
return done({
  outcome = outcome, keyword = keyword, inbound = inbound, outbound = outbound,
  session = { sid = sid, status = sess.status == 'open' and 'in-progress' or sess.status, mode = sess.mode },
  interaction = ix, legs = #legs > 1 and legs or nil, outside_window = outside_window,
})
