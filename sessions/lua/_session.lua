-- The session state machine's helpers: expiry, views, closing, the interaction record.
-- Prepended after core/lua/_lib.lua and pool/lua/_pool.lua to every session script.
-- INTERACTION_FIELDS and RELAY_SETTING_FIELDS are defined by the loader from Python's
-- sessions/models.py, so Lua and Python read and write one field list, by name; so are
-- PARTICIPANT_SLOT and SLOT_NAME (a participant's field name by its code's byte: session_record).
-- Keys (core/keys.py): `sess:{KC}` hash (with its participants), `part:{KP}` hash (a removed
-- participant), `expiry` zset, `sessions` zset, `uname:{name}`, `ix:{KI}` hash, `sess:{KC}:ix`
-- zset, `wa:{whatsapp:+E164}:{proxy}`.

-- A session's participants, as its `parts` field holds them: their sids without the 'KP', end to
-- end (32 hex digits each), so that a two-party session's field stays within 64 bytes and its hash
-- in Redis' compact encoding (hash-max-listpack-value: about 0.7 KB less per session). A sid of
-- another shape, and a session written before this format, are comma-separated with the prefix
-- (hex never starts with 'K'): both read alike.
local function part_sids(parts)
  local sids = {}
  if string.sub(parts or '', 1, 2) == 'KP' then
    for kp in string.gmatch(parts, '[^,]+') do sids[#sids + 1] = kp end
  else
    for i = 1, #(parts or ''), 32 do sids[#sids + 1] = 'KP' .. string.sub(parts, i, i + 31) end
  end
  return sids
end

local function parts_field(sids)
  local packed = {}
  for i, kp in ipairs(sids) do
    if not string.match(kp, '^KP' .. string.rep('%x', 32) .. '$') then return table.concat(sids, ',') end
    packed[i] = string.sub(kp, 3)
  end
  return table.concat(packed)
end

local function has_part(parts, kp)
  for _, p in ipairs(part_sids(parts)) do
    if p == kp then return true end
  end
  return false
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

-- A session's fields left out of its hash while they hold their default (SESSION_DEFAULTS, from
-- sessions/models.py): session_record fills them in, as it does the empty ones.
-- `value`, or '' (not stored: hset_present) when it is the field's default.
local function unless_default(field, value)
  if tostring(value) == SESSION_DEFAULTS[field] then return '' end
  return value
end
-- `fields[name]`, or '' (not stored) when it is the session's created_ms (SESSION_AS_CREATED).
local function unless_as_created(fields, name)
  if tostring(fields[name]) == tostring(fields.created_ms) then return '' end
  return fields[name]
end
local function set_session_field(sid, field, value)
  if tostring(value) == SESSION_DEFAULTS[field] then
    redis.call('HDEL', P .. 'sess:' .. sid, field)
  else
    redis.call('HSET', P .. 'sess:' .. sid, field, value)
  end
end

-- `sess`: the session's record as stored, with the changes that move its expiry (last activity,
-- TTL, date expiry) applied; nothing is written when its expiry stays as stored.
local function schedule_expiry(sid, sess)
  local at = expires_at(sess)
  if tostring(at) == tostring(sess.expires_at_ms) then return at end
  set_session_field(sid, 'expires_at_ms', at)
  if at > 0 then redis.call('ZADD', P .. 'expiry', at, sid) else redis.call('ZREM', P .. 'expiry', sid) end
  return at
end

-- HSET of the given field/value pairs whose value is not empty (nil, false, ''): a session's or
-- participant's empty fields are not stored (each would cost Redis memory for nothing) and read
-- as '' (session_record, participant_view).
local function hset_present(key, ...)
  local args = {}
  for i = 1, select('#', ...), 2 do
    local f, v = select(i, ...)
    if v and v ~= '' then
      args[#args + 1] = f
      args[#args + 1] = v
    end
  end
  if #args > 0 then redis.call('HSET', key, unpack(args)) end
end

-- A session's live participants are fields of its hash: `{n}{code}`, n the participant's place in
-- `parts` (1-based), code PARTICIPANT_SLOT[name] (sessions/models.py): one key per session rather
-- than one more per participant. Left out besides the empty fields: created_ms when it is the
-- session's, updated_ms when it is the participant's created_ms, and while the session is live
-- the proxy number's PN sid (the pool's `num:` hash has it, and a number in use cannot leave the
-- pool; close_session writes it in). A participant removed from its session gets a `part:{KP}`
-- hash of its own (remove_participant.lua), with deleted_ms.

-- The field/value pairs of participant `p` at place n (for HSET; empty when nothing is stored).
local function slot_fields(n, p, session_created_ms, with_pn)
  local flat = {}
  for name, code in pairs(PARTICIPANT_SLOT) do
    local v = p[name]
    if v ~= nil and v ~= false then v = tostring(v) else v = '' end
    if (name == 'created_ms' and v == tostring(session_created_ms)) or
       (name == 'updated_ms' and v == tostring(p.created_ms)) or
       (name == 'proxy_identifier_sid' and not with_pn) then
      v = ''
    end
    if v ~= '' then
      flat[#flat + 1] = n .. code
      flat[#flat + 1] = v
    end
  end
  return flat
end

-- Participants `members` (views: sid, identifier, ...) as the session's participants, in that
-- order, in place of its `old_count` earlier ones (their fields go; `parts` is rewritten).
-- `with_pn`: their PN sids too (a closed session's).
local function set_members(sid, session_created_ms, members, old_count, with_pn)
  local sk = P .. 'sess:' .. sid
  local gone = {}
  for n = 1, old_count do
    for _, code in pairs(PARTICIPANT_SLOT) do gone[#gone + 1] = n .. code end
  end
  if #gone > 0 then redis.call('HDEL', sk, unpack(gone)) end
  local flat, sids = {}, {}
  for n, p in ipairs(members) do
    sids[n] = p.sid
    for _, x in ipairs(slot_fields(n, p, session_created_ms, with_pn)) do flat[#flat + 1] = x end
  end
  if #sids == 0 then
    redis.call('HDEL', sk, 'parts')
  else
    redis.call('HSET', sk, 'parts', parts_field(sids), unpack(flat))
  end
end

-- A session written before its participants moved into its hash (each in a `part:{KP}` hash):
-- they move in when a script first reads it. Returns the hash as it is then.
local function move_in_participants(sid, raw)
  local members = {}
  for _, kp in ipairs(part_sids(raw.parts)) do
    local p = hgetall(P .. 'part:' .. kp)
    if p then
      p.sid = kp
      members[#members + 1] = p
      redis.call('DEL', P .. 'part:' .. kp)
    end
  end
  set_members(sid, raw.created_ms, members, 0, raw.status == 'closed')
  return hgetall(P .. 'sess:' .. sid)
end


-- A session's hash with its sid (the key's, not stored) and its empty fields as '' (SESSION_OPTIONAL
-- and SESSION_DEFAULTS: sessions/models.py), without its participants' fields; and its live
-- participants as views (sid, session_sid, identifier, proxy_identifier, proxy_identifier_sid,
-- friendly_name, pin, created_ms, updated_ms), in order. nil when there is no such session.
local function session_record(sid)
  local raw = sid and sid ~= '' and hgetall(P .. 'sess:' .. sid)
  if not raw then return nil, nil end
  if (raw.parts or '') ~= '' and not raw['1' .. PARTICIPANT_SLOT.identifier] then
    raw = move_in_participants(sid, raw)
  end
  local s, slots = { sid = sid }, {}
  for f, v in pairs(raw) do
    local first = string.byte(f)
    if first > 57 then
      s[f] = v
    else  -- a participant's field `{n}{code}` (n: 1-9, or more digits)
      local n = #f == 2 and first - 48 or tonumber(string.sub(f, 1, -2))
      local p = slots[n]
      if not p then
        p = {}
        slots[n] = p
      end
      p[SLOT_NAME[string.byte(f, -1)]] = v
    end
  end
  for _, f in ipairs(SESSION_OPTIONAL) do s[f] = s[f] or '' end
  for f, default in pairs(SESSION_DEFAULTS) do s[f] = s[f] or default end
  for _, f in ipairs(SESSION_AS_CREATED) do s[f] = s[f] or s.created_ms end
  local members = {}
  for n, kp in ipairs(part_sids(s.parts)) do
    local p = slots[n] or {}
    p.sid, p.session_sid = kp, sid
    p.created_ms = p.created_ms or raw.created_ms
    p.updated_ms = p.updated_ms or p.created_ms
    p.friendly_name = p.friendly_name or ''
    members[n] = p
  end
  return s, members
end

-- Participant `kp` of session `sid`: one of `members` (session_record's), or one removed from it
-- (its own hash, with deleted_ms). nil when neither.
local function member(sid, members, kp)
  for _, p in ipairs(members or {}) do
    if p.sid == kp then return p end
  end
  local p = hgetall(P .. 'part:' .. kp)
  if p and p.session_sid == sid then
    p.sid = kp
    p.friendly_name = p.friendly_name or ''
    return p
  end
  return nil
end

-- A participant as the API shows it: its PN sid from the pool while its session is live.
local function with_pn(p)
  if p and not p.proxy_identifier_sid and p.proxy_identifier then
    p.proxy_identifier_sid = redis.call('HGET', P .. 'num:' .. p.proxy_identifier, 'sid') or nil
  end
  return p
end

local function participant_view(sid, kp)
  local _, members = session_record(sid)
  return with_pn(member(sid, members, kp))
end

-- Interaction `view` with the real numbers it concerns (design.md, "Events"): each side's
-- participant's identifier (`inbound_identifier`, `outbound_identifier`) and `numbers`.
local function with_numbers(view)
  local _, members = session_record(view.session_sid)
  local numbers = {}
  for _, side in ipairs({ 'inbound', 'outbound' }) do
    local kp = view[side .. '_participant_sid']
    local p = kp and kp ~= '' and member(view.session_sid, members, kp)
    if p then
      view[side .. '_identifier'] = p.identifier
      numbers[#numbers + 1] = p.identifier
      numbers[#numbers + 1] = p.proxy_identifier
    end
  end
  view.numbers = numbers
  return view
end

local function session_view(sid)
  local s, members = session_record(sid)
  if not s then return nil end
  local numbers = {}
  for _, p in ipairs(members) do
    with_pn(p)
    numbers[#numbers + 1] = p.identifier
    numbers[#numbers + 1] = p.proxy_identifier
  end
  s.participants = members
  s.numbers = numbers
  return s
end

-- WhatsApp's 24-hour window for free-form messages from `proxy` to a WhatsApp participant: open
-- while this key lives (route_inbound.lua sets it on each of their messages to `proxy`).
local function window_key(identifier, proxy) return P .. 'wa:' .. identifier .. ':' .. proxy end
local function window_open(identifier, proxy)
  return not is_whatsapp(identifier) or redis.call('EXISTS', window_key(identifier, proxy)) == 1
end

-- Let `keys` live `ms` more, never longer than they already would (an interaction record leaves
-- Redis after its hot window whatever becomes of its session).
local function retain(keys, ms)
  for _, k in ipairs(keys) do
    local left = redis.call('PTTL', k)
    if left == -1 or left > ms then redis.call('PEXPIRE', k, ms) end
  end
end

-- A scheduled message's new status: `status`, `reason` and the field/value pairs given after
-- `now` written, then its `scheduled_message.<status>` event with the participant's numbers (an
-- id derived from the message and the status: one event per status). Returns the message.
local function settle_scheduled(km, status, reason, now, ...)
  local key = P .. 'sm:' .. km
  redis.call('HSET', key, 'status', status, 'reason', reason, 'updated_ms', now, ...)
  local view = hgetall(key)
  local part = participant_view(view.session_sid, view.participant_sid) or {}
  view.numbers = { part.identifier, part.proxy_identifier }
  emit('EV' .. string.sub(redis.sha1hex(km .. ':' .. status), 1, 32), 'scheduled_message.' .. status, now, view)
  view.numbers = nil
  return view
end

-- The checks before a text to participant `kp` of session `sid`, sent now or later (`verb`:
-- "sent", "scheduled"): the session exists, the participant is in it, the session is live, and
-- the participant has not replied STOP to their proxy number. Returns the session and the
-- participant, or nil and the failure reply (20404, 80607, 21610).
local function text_target(sid, kp, verb)
  local sess, members = session_record(sid)
  if not sess then return nil, fail(20404, 'Session ' .. sid .. ' was not found') end
  local part = member(sid, members, kp)
  if not part or part.deleted_ms then
    return nil, fail(20404, 'Participant ' .. kp .. ' was not found in Session ' .. sid)
  end
  if sess.status == 'closed' then
    return nil, fail(80607, 'Session ' .. sid .. ' is closed; a message cannot be ' .. verb .. ' in a closed Session')
  end
  if redis.call('EXISTS', P .. 'optout:' .. part.identifier .. ':' .. part.proxy_identifier) == 1 then
    return nil, fail(21610, 'Attempt to send to unsubscribed recipient: the participant replied STOP to this proxy number')
  end
  return sess, part
end

-- Cancel a session's scheduled messages that have not gone out yet (all, or those to participant
-- `only_kp`): status canceled with `reason`, off the due list, each with its audit event.
local function cancel_scheduled(sid, reason, now, only_kp)
  local index = P .. 'sess:' .. sid .. ':sm'
  for _, km in ipairs(redis.call('ZRANGE', index, 0, -1)) do
    local status, kp = unpack(redis.call('HMGET', P .. 'sm:' .. km, 'status', 'participant_sid'))
    if status == 'scheduled' and (not only_kp or kp == only_kp) then
      redis.call('ZREM', P .. 'due', km)
      settle_scheduled(km, 'canceled', reason, now)
    end
  end
end

-- Close a live session: release its pairs into cool-off, leave the expiry list, cancel its
-- scheduled messages, keep the records readable for the retention period. Idempotent: a closed
-- session is left alone (returns false).
local function close_session(sid, reason, now, event_id)
  local sk = P .. 'sess:' .. sid
  local sess, members = session_record(sid)
  if not sess or sess.status == 'closed' then return false end
  local cool_off_ms = (tonumber(svc_field('cool_off_s', '0')) or 0) * 1000
  local keep_ms = math.max(cool_off_ms, (tonumber(svc_field('closed_retention_s', '604800')) or 604800) * 1000)
  local keys = { sk }
  local pns = {}  -- (its numbers may leave the pool now: their PN sids are kept with it)
  for n, p in ipairs(members) do
    release_pair(sid, p.sid, p.identifier, p.proxy_identifier, p.pin, cool_off_ms)
    if with_pn(p).proxy_identifier_sid then
      pns[#pns + 1] = n .. PARTICIPANT_SLOT.proxy_identifier_sid
      pns[#pns + 1] = p.proxy_identifier_sid
    end
  end
  redis.call('HSET', sk, 'status', 'closed', 'closed_reason', reason, 'ended_ms', now, 'updated_ms', now,
    unpack(pns))
  set_session_field(sid, 'expires_at_ms', '0')
  cancel_scheduled(sid, 'session_' .. reason, now)
  redis.call('ZREM', P .. 'expiry', sid)
  if sess.unique_name ~= '' then keys[#keys + 1] = P .. 'uname:' .. sess.unique_name end
  keys[#keys + 1] = sk .. ':ix'
  for _, ki in ipairs(redis.call('ZRANGE', sk .. ':ix', 0, -1)) do keys[#keys + 1] = P .. 'ix:' .. ki end
  keys[#keys + 1] = sk .. ':sm'
  for _, km in ipairs(redis.call('ZRANGE', sk .. ':sm', 0, -1)) do keys[#keys + 1] = P .. 'sm:' .. km end
  retain(keys, keep_ms)
  if event_id then emit(event_id, 'session.closed', now, session_view(sid)) end
  return true
end


-- Leg j (j >= 2) of a text relayed to several participants (a session of more than two): its
-- interaction sid, derived from the first leg's, so that a retry of the webhook finds every leg.
local function leg_sid(ki, j)
  return 'KI' .. string.sub(redis.sha1hex(ki .. ':' .. j), 1, 32)
end

-- Record an interaction: every field of INTERACTION_FIELDS, '' where `t` has none, indexed in its
-- session's interaction list. Returns `t`, now the record as stored (every field a string). Its
-- created_ms is its position in that list and is kept strictly increasing within the session (a
-- millisecond past the newest when two land in the same one), so newest-first is the order they
-- happened in, here and in the audit log.
-- Redis keeps it for its hot window (`hot_ms`; a call for as long as it may last besides, since
-- its statuses come at its end), then the audit log is its only copy: the session's index drops
-- what is older than the window, and the session counts its interactions (`ix_count`), so a
-- reader knows when Redis no longer holds them all (sessions/interactions.py).
-- What Redis stores of it leaves out its sid (the key's), its resource types (Message or Call, by
-- its type, the inbound one only for an inbound interaction) and its empty fields: about 130
-- bytes less per text within the hot window. interaction_stored reads it back whole.
local CALL_MAX_MS = 4 * 3600 * 1000  -- Twilio ends a call after 4 hours unless told otherwise
local NOT_STORED = { sid = true, inbound_resource_type = true, outbound_resource_type = true }
local function record_interaction(ki, t, now, hot_ms)
  local index = P .. 'sess:' .. t.session_sid .. ':ix'
  local newest = redis.call('ZREVRANGE', index, 0, 0, 'WITHSCORES')[2]
  if newest and tonumber(newest) >= now then now = tonumber(newest) + 1 end
  t.created_ms, t.updated_ms = now, now
  local flat, n = {}, 0
  for _, f in ipairs(INTERACTION_FIELDS) do  -- `t` becomes the record as stored
    local v = t[f]
    if v == nil then
      v = ''
    elseif type(v) ~= 'string' then
      v = tostring(v)  -- as Redis stores it (and interaction_stored gives it back)
    end
    if v ~= '' and not NOT_STORED[f] then
      flat[n + 1], flat[n + 2] = f, v
      n = n + 2
    end
    t[f] = v
  end
  local keep = hot_ms + (t.type == 'voice' and CALL_MAX_MS or 0)
  redis.call('HSET', P .. 'ix:' .. ki, unpack(flat))
  redis.call('PEXPIRE', P .. 'ix:' .. ki, keep)
  -- An index without a TTL was written before records had a hot window: its records' window
  -- starts now, before the oldest of them leave the index (a new index has no `newest`).
  if newest and redis.call('PTTL', index) == -1 then
    for _, old in ipairs(redis.call('ZRANGE', index, 0, -1)) do
      if redis.call('PTTL', P .. 'ix:' .. old) == -1 then redis.call('PEXPIRE', P .. 'ix:' .. old, keep) end
    end
  end
  redis.call('ZREMRANGEBYSCORE', index, '-inf', '(' .. (now - keep))
  redis.call('ZADD', index, now, ki)
  if redis.call('PTTL', index) < keep then redis.call('PEXPIRE', index, keep) end
  redis.call('HINCRBY', P .. 'sess:' .. t.session_sid, 'ix_count', 1)
  return t
end

-- An interaction record as record_interaction stored it, whole again (nil when Redis no longer
-- holds it). sessions/models.py, interaction_from_redis, reads it alike in Python.
local function interaction_stored(ki)
  local t = hgetall(P .. 'ix:' .. ki)
  if not t then return nil end
  for _, f in ipairs(INTERACTION_FIELDS) do
    if t[f] == nil then t[f] = '' end
  end
  local kind = t.type == 'voice' and 'Call' or 'Message'
  t.sid, t.outbound_resource_type = ki, kind
  t.inbound_resource_type = t.origin == 'inbound' and kind or ''
  return t
end

-- A status callback (or Twilio's answer to a send) applied to interaction `ki`, atomically: a
-- status only moves forward by STATUS_RANK (core/records.py: a status moves to one of the same or
-- a higher rank; unknown: 1 as the new one, 0 as the current), `data_json` merges into the record's
-- data, interaction.updated (`event_id`) is emitted when anything changed, and the record is kept
-- `keep_ms` at least. Returns the record as stored afterwards, or nil when Redis no longer holds
-- it (then a status change is still logged when `session_sid` names the session).
local function apply_interaction_update(ki, out_sid, out_status, in_status, data_json, event_id, keep_ms,
                                        session_sid, now)
  local key = P .. 'ix:' .. ki
  local row = interaction_stored(ki)
  if not row then
    if session_sid ~= '' and (out_status ~= '' or in_status ~= '') then
      emit(event_id, 'interaction.updated', now, { sid = ki, session_sid = session_sid, updated_ms = tostring(now),
        outbound_resource_sid = out_sid ~= '' and out_sid or nil,
        outbound_resource_status = out_status ~= '' and out_status or nil,
        inbound_resource_status = in_status ~= '' and in_status or nil })
    end
    return nil
  end

  local function advances(current, new)
    return new ~= '' and new ~= current and (STATUS_RANK[new] or 1) >= (STATUS_RANK[current or ''] or 0)
  end

  local changes = {}
  if out_sid ~= '' and row.outbound_resource_sid ~= out_sid then changes.outbound_resource_sid = out_sid end
  if advances(row.outbound_resource_status, out_status) then changes.outbound_resource_status = out_status end
  if advances(row.inbound_resource_status, in_status) then changes.inbound_resource_status = in_status end
  if data_json ~= '' then
    local ok, merged = pcall(cjson.decode, row.data or '')
    if not ok or type(merged) ~= 'table' then merged = {} end
    local changed = false
    for k, v in pairs(cjson.decode(data_json)) do
      if merged[k] ~= v then merged[k], changed = v, true end
    end
    if changed then changes.data = cjson.encode(merged) end
  end
  if next(changes) == nil then return row end

  changes.updated_ms = tostring(now)
  local flat = {}
  for f, v in pairs(changes) do
    flat[#flat + 1] = f
    flat[#flat + 1] = v
    row[f] = v
  end
  redis.call('HSET', key, unpack(flat))
  local left = redis.call('PTTL', key)
  if left >= 0 and left < tonumber(keep_ms) then redis.call('PEXPIRE', key, keep_ms) end

  local view = {}  -- the event's: the record with the numbers it concerns
  for f, v in pairs(row) do view[f] = v end
  emit(event_id, 'interaction.updated', now, with_numbers(view))
  return row
end

-- The Service's relay settings, by name (sessions.models.RelayOptions reads the same names).
local function relay_settings(extra)
  -- (`extra`: one more field of the `svc` hash read in the same HMGET, e.g. 'limits')
  local fields = RELAY_SETTING_FIELDS
  if extra then
    fields = { extra }
    for _, f in ipairs(RELAY_SETTING_FIELDS) do fields[#fields + 1] = f end
  end
  local values = redis.call('HMGET', P .. 'svc', unpack(fields))
  local t = {}
  for i, f in ipairs(fields) do t[f] = values[i] end
  return t
end
