-- Record a proactive message (the API's MessageInteractions) atomically with its checks. Like an
-- inbound interaction it moves the session to in-progress and restarts its TTL.
-- KEYS[1]  Service prefix "ml:{KS}:"
-- ARGV[1]  now_ms or ''
-- ARGV[2]  event id for interaction.created
-- ARGV[3]  session sid (KC)
-- ARGV[4]  participant sid (KP)
-- ARGV[5]  interaction sid (KI)
-- ARGV[6]  data (JSON text: {"body": ..., "media": [...]} or {"content_sid": ..., "content_variables": ...})
-- ARGV[7]  '1' a WhatsApp template (ContentSid: allowed outside the 24-hour window), '' free-form
-- ARGV[8]  ms Redis keeps the interaction record (its hot window; then the audit log has it)
-- Returns JSON {interaction = the record, participant = its hash} or {e, m}:
--   20404 no such session / participant in it; 80607 the session is closed;
--   21610 the participant opted out of texts from their proxy number;
--   63016 a free-form message to a WhatsApp participant outside its 24-hour window (no message
--         from them to their proxy number in 24 h): refused as Twilio would, audited
--         (`message.refused`), nothing else written.

local now = now_ms(ARGV[1])
local sid, kp, ki = ARGV[3], ARGV[4], ARGV[5]
local sk = P .. 'sess:' .. sid
local sess, part = text_target(sid, kp, 'sent')
if not sess then return part end
if ARGV[7] ~= '1' and not window_open(part.identifier, part.proxy_identifier) then
  emit(ARGV[2], 'message.refused', now, { session_sid = sid, participant_sid = kp, code = 63016,
    numbers = { part.identifier, part.proxy_identifier } })
  return fail(63016, 'Outside messaging window: participant ' .. kp .. ' has not written to ' ..
    part.proxy_identifier .. ' on WhatsApp in the last 24 hours; send a WhatsApp template (ContentSid) instead')
end
if sess.status == 'open' then redis.call('HSET', sk, 'status', 'in-progress') end
redis.call('HSET', sk, 'last_interaction_ms', now, 'last_activity_ms', now, 'updated_ms', now)
sess.last_activity_ms = now
schedule_expiry(sid, sess)
local ix = record_interaction(ki, {
  sid = ki, session_sid = sid, type = 'message', data = ARGV[6], outcome = 'proactive', origin = 'api',
  outbound_participant_sid = kp, outbound_resource_status = 'initiated', outbound_resource_type = 'Message',
  created_ms = now, updated_ms = now,
}, now, tonumber(ARGV[8]))
local view = {}  -- the record as stored (record_interaction's copy: no second read), for the event
for k, v in pairs(ix) do view[k] = v end
view.numbers = { part.identifier, part.proxy_identifier }
view.outbound_identifier = part.identifier
view.outbound_proxy_identifier = part.proxy_identifier
emit(ARGV[2], 'interaction.created', now, view)
return cjson.encode({ interaction = ix, participant = part })
