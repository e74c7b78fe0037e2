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
-- ARGV[11] the caller's deadline (core/lua/_lib.lua)
-- Returns JSON with `outcome`:
--   duplicate   {replay, interaction, outbound}  a retry: render the first answer again. The
--               `seen:` key holds the interaction sid while the first is in flight, then
--               "<replay>:<KI>" (sessions.models.Replay): never a number or a body.
--   no_session  {previous}                     no live session for the pair (previous: the closed one, if any);
--               {sender_blocked=true}          From is on the Service's block list: out of session, whatever its pairs
--   mode        {session}                      the session's mode refuses this kind
--   keyword     {keyword, ...relay fields}     STOP / START / HELP: never relayed; recorded
--   blocked     {...relay fields}              the recipient opted out of texts from that number
--   rate_limited {...relay fields}             the sender or the proxy number is over the
--               Service's limits (texts per minute, calls per hour): never relayed; recorded, and
--               an interaction.rate_limited event besides interaction.created
--   relay       {session, inbound, outbound, interaction}
--   (keyword, blocked and relay also carry `interaction`: the record as stored)
-- Every outcome carries `svc`: the Service's relay settings by name (RELAY_SETTING_FIELDS, false
-- when unset), so the webhook needs no second round trip.

local now = now_ms(ARGV[1])
local from, to, kind, resource, ki, keyword = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8]

local function done(t)
  t.svc = relay_settings()
  return cjson.encode(t)
end

local function duplicate(value)
  local replay, first = string.match(value, '^([a-z]*):(KI%x+)$')
  local t = { outcome = 'duplicate', replay = replay or '' }
  local ix = first and hgetall(P .. 'ix:' .. first)
  if ix then
    t.interaction = ix
    if ix.outbound_participant_sid and ix.outbound_participant_sid ~= '' then
      t.outbound = participant_view(ix.outbound_participant_sid)
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

if redis.call('SISMEMBER', P .. 'blocked', from) == 1 then
  return done({ outcome = 'no_session', sender_blocked = true })
end
local holder = redis.call('GET', pair_key(from, to))
if not holder then return done({ outcome = 'no_session' }) end
local sid, kp = string.match(holder, '^([^:]+):(.+)$')
local sk = P .. 'sess:' .. sid
local sess = hgetall(sk)
local live = sess and sess.status ~= 'closed' and string.find(',' .. (sess.parts or '') .. ',', ',' .. kp .. ',', 1, true)
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

local inbound = participant_view(kp)
local outbound = nil
for other in string.gmatch(sess.parts, '[^,]+') do
  if other ~= kp then outbound = participant_view(other) end
end
if outbound == nil then
  return done({ outcome = 'no_session', previous = session_view(sid) })
end
if (kind == 'voice' and sess.mode == 'message-only') or (kind == 'message' and sess.mode == 'voice-only') then
  return done({ outcome = 'mode', session = sess })
end

local outcome = 'relay'
if kind == 'message' then
  if keyword == 'optout' then
    redis.call('SET', P .. 'optout:' .. from .. ':' .. to, now)
    outcome = 'keyword'
  elseif keyword == 'optin' then
    redis.call('DEL', P .. 'optout:' .. from .. ':' .. to)
    outcome = 'keyword'
  elseif keyword == 'help' then
    outcome = 'keyword'
  elseif redis.call('EXISTS', P .. 'optout:' .. outbound.identifier .. ':' .. outbound.proxy_identifier) == 1 then
    outcome = 'blocked'
  end
end

-- Abuse limits (the Service's `limits`: "texts/min,calls/h per participant number,texts/min,
-- calls/h per proxy number", 0 = none): fixed windows counted here, in the routing call itself.
-- Every attempt counts, refused ones too: a flood stays refused until its window ends.
local function over_limit()
  local raw = redis.call('HGET', P .. 'svc', 'limits')
  if not raw or raw == '' then return false end
  local tpm, cph, ptpm, pcph = string.match(raw, '^(%d+),(%d+),(%d+),(%d+)$')
  if not tpm then return false end
  local limits, window = { tonumber(cph), tonumber(pcph) }, 3600000
  if kind == 'message' then limits, window = { tonumber(tpm), tonumber(ptpm) }, 60000 end
  local slot = math.floor(now / window)
  local over = false
  for i, who in ipairs({ 'p:' .. from, 'n:' .. to }) do
    if limits[i] > 0 then
      local k = P .. 'rl:' .. kind .. ':' .. who .. ':' .. slot
      local n = redis.call('INCR', k)
      if n == 1 then redis.call('PEXPIRE', k, window) end
      if n > limits[i] then over = true end
    end
  end
  return over
end
if outcome == 'relay' and over_limit() then outcome = 'rate_limited' end

-- The session is in use: in-progress, and its TTL counts from now.
if sess.status == 'open' then redis.call('HSET', sk, 'status', 'in-progress') end
redis.call('HSET', sk, 'last_interaction_ms', now, 'last_activity_ms', now, 'updated_ms', now)
sess.last_activity_ms = now
schedule_expiry(sid, sess)

local message = kind == 'message'
local ix = record_interaction(ki, {
  sid = ki, session_sid = sid, type = kind, data = ARGV[9], outcome = outcome, origin = 'inbound',
  inbound_participant_sid = kp, inbound_resource_sid = resource,
  inbound_resource_status = message and 'received' or 'in-progress',
  inbound_resource_type = message and 'Message' or 'Call',
  outbound_participant_sid = outbound.sid,
  outbound_resource_status = outcome == 'relay' and 'initiated' or 'failed',
  outbound_resource_type = message and 'Message' or 'Call',
  created_ms = now, updated_ms = now,
}, now)
local ix_view = hgetall(P .. 'ix:' .. ki)
ix_view.numbers = { from, to, outbound.identifier, outbound.proxy_identifier }
ix_view.inbound_identifier = from
ix_view.outbound_identifier = outbound.identifier
emit(ARGV[2], 'interaction.created', now, ix_view)
if outcome == 'rate_limited' then
  -- its own event (a sibling id of the interaction's event), for the audit log and alerts
  emit(string.sub(ARGV[2], 1, -2) .. (string.sub(ARGV[2], -1) == '0' and '1' or '0'), 'interaction.rate_limited',
    now, { interaction_sid = ki, session_sid = sid, kind = kind, numbers = { from, to } })
end
-- Until the webhook answers, the relay is in flight: settle_unanswered.lua judges it after its
-- deadline (a worker killed before answering never relayed it).
if resource ~= '' then
  redis.call('ZADD', P .. 'inflight', tonumber(ARGV[#ARGV]) or (now + 5000), ki)
end
return done({
  outcome = outcome, keyword = keyword, session = hgetall(sk), inbound = inbound, outbound = outbound,
  interaction = ix,
})
