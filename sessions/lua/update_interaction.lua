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
-- ARGV[7]  the status ranks, "status=rank,..." (sessions/interactions.py STATUS_RANK; a status
--          moves to one of the same or a higher rank; unknown: 1 as the new one, 0 as the current)
-- ARGV[8]  event id for interaction.updated
-- ARGV[9]  ms Redis keeps the record after this change, at least (its hot window)
-- ARGV[10] the interaction's session sid (KC) as the status callback's URL names it, or ''
-- ARGV[11] the caller's deadline (core/lua/_lib.lua)
-- Returns JSON: the interaction as stored afterwards, or {} when Redis no longer holds it. A
-- record past its hot window is in the audit log only: the change is still logged there (an
-- interaction.updated event of the statuses alone, which the log's fold lays over the record).

local now = now_ms(ARGV[1])
local key = P .. 'ix:' .. ARGV[2]
local row = interaction_stored(ARGV[2])
if not row then
  if ARGV[10] ~= '' and (ARGV[4] ~= '' or ARGV[5] ~= '') then
    emit(ARGV[8], 'interaction.updated', now, { sid = ARGV[2], session_sid = ARGV[10], updated_ms = tostring(now),
      outbound_resource_sid = ARGV[3] ~= '' and ARGV[3] or nil,
      outbound_resource_status = ARGV[4] ~= '' and ARGV[4] or nil,
      inbound_resource_status = ARGV[5] ~= '' and ARGV[5] or nil })
  end
  return '{}'
end

local rank = {}
for status, r in string.gmatch(ARGV[7], '([^,=]*)=(%d+)') do rank[status] = tonumber(r) end
local function advances(current, new)
  return new ~= '' and new ~= current and (rank[new] or 1) >= (rank[current or ''] or 0)
end

local changes = {}
if ARGV[3] ~= '' and row.outbound_resource_sid ~= ARGV[3] then changes.outbound_resource_sid = ARGV[3] end
if advances(row.outbound_resource_status, ARGV[4]) then changes.outbound_resource_status = ARGV[4] end
if advances(row.inbound_resource_status, ARGV[5]) then changes.inbound_resource_status = ARGV[5] end
if ARGV[6] ~= '' then
  local ok, merged = pcall(cjson.decode, row.data or '')
  if not ok or type(merged) ~= 'table' then merged = {} end
  local changed = false
  for k, v in pairs(cjson.decode(ARGV[6])) do
    if merged[k] ~= v then merged[k], changed = v, true end
  end
  if changed then changes.data = cjson.encode(merged) end
end
if next(changes) == nil then return cjson.encode(row) end

changes.updated_ms = tostring(now)
local flat = {}
for f, v in pairs(changes) do
  flat[#flat + 1] = f
  flat[#flat + 1] = v
  row[f] = v
end
redis.call('HSET', key, unpack(flat))
local left = redis.call('PTTL', key)
if left >= 0 and left < tonumber(ARGV[9]) then redis.call('PEXPIRE', key, ARGV[9]) end

-- The event: the interaction with the real numbers it concerns (design.md, "Events").
local view, numbers = {}, {}
for f, v in pairs(row) do view[f] = v end
for _, side in ipairs({ 'inbound', 'outbound' }) do
  local kp = row[side .. '_participant_sid']
  if kp and kp ~= '' then
    local found = redis.call('HMGET', P .. 'part:' .. kp, 'identifier', 'proxy_identifier')
    if found[1] then
      view[side .. '_identifier'] = found[1]
      numbers[#numbers + 1] = found[1]
    end
    if found[2] then numbers[#numbers + 1] = found[2] end
  end
end
view.numbers = numbers
emit(ARGV[8], 'interaction.updated', now, view)
return cjson.encode(row)
