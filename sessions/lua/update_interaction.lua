-- Apply a status callback to an interaction, atomically: a status only moves forward (Twilio posts
-- each callback in its own request, so they race and arrive out of order), `data` merges into the
-- record's data; interaction.updated is emitted when anything changed.
-- KEYS[1]  Service prefix "ml:{KS}:"
-- ARGV[1]  now_ms or ''
-- ARGV[2]  interaction sid (KI)
-- ARGV[3]  outbound resource sid, or ''
-- ARGV[4]  outbound resource status, or ''
-- ARGV[5]  inbound resource status, or ''
-- ARGV[6]  data to merge: a JSON object of plain values, or ''
-- ARGV[7]  event id for interaction.updated
-- ARGV[8]  ms Redis keeps the record after this change, at least (its hot window)
-- ARGV[9]  the interaction's session sid (KC) as the status callback's URL names it, or ''
-- ARGV[10] the caller's deadline (core/lua/_lib.lua)
-- (statuses move forward by STATUS_RANK, core/records.py)
-- Returns JSON: the interaction as stored afterwards, or {} when Redis no longer holds it. A
-- record past its hot window is in the audit log only: the change is still logged there (an
-- interaction.updated event of the statuses alone, which the log's fold lays over the record).

local row = apply_interaction_update(ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8],
  ARGV[9], now_ms(ARGV[1]))
if not row then return '{}' end
return cjson.encode(row)
