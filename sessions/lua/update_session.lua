-- Update a session: Ttl, DateExpiry and Status (close, or re-open a closed session).
-- KEYS[1]  Service prefix "ml:{KS}:"
-- ARGV[1]  now_ms or ''
-- ARGV[2]  event id (session.updated or session.closed)
-- ARGV[3]  session sid
-- ARGV[4]  ttl_s or '' (unchanged)
-- ARGV[5]  date_expiry_ms or '' (unchanged)
-- ARGV[6]  status or '' (unchanged): closed | in-progress | open
-- Returns JSON: the session view, or {e=code, m=message}.

local now = now_ms(ARGV[1])
local sid, ttl, date_expiry, status = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local sk = P .. 'sess:' .. sid
local sess, members = session_record(sid)
if not sess then return fail(20404, 'Session ' .. sid .. ' was not found') end

if sess.status == 'closed' then
  if status ~= 'in-progress' then
    if status == 'closed' and ttl == '' and date_expiry == '' then return cjson.encode(session_view(sid)) end
    return fail(80607, 'Session ' .. sid .. ' is closed and cannot be updated; re-open it with Status=in-progress')
  end
  -- Re-open only if every pair is still ours (cooling off) or free; never steal a pair.
  for _, m in ipairs(members) do
    local holder = redis.call('GET', pair_key(m.identifier, m.proxy_identifier, m.pin))
    if holder and not holds(holder, sid, m.sid) then
      return fail(80604, 'proxy number ' .. m.proxy_identifier .. ' is now paired with ' .. m.identifier ..
        ' in another Session; create a new Session')
    end
    if redis.call('EXISTS', P .. 'num:' .. m.proxy_identifier) == 0 then
      return fail(80604, 'proxy number ' .. m.proxy_identifier .. ' left the pool; create a new Session')
    end
  end
  for _, m in ipairs(members) do hold_pair(m.identifier, m.proxy_identifier, sid, m.sid, m.pin) end
  set_members(sid, sess.created_ms, members, #members, false)  -- (live again: PN sids from the pool)
  -- (its interactions keep their own hot window: _session.lua, record_interaction)
  for _, k in ipairs({ sk, P .. 'uname:' .. (sess.unique_name or '') }) do redis.call('PERSIST', k) end
  redis.call('HDEL', sk, 'closed_reason', 'ended_ms')
  redis.call('HSET', sk, 'status', 'in-progress', 'updated_ms', now, 'last_activity_ms', now)
  if ttl ~= '' then set_session_field(sid, 'ttl', ttl) end
  if date_expiry ~= '' then redis.call('HSET', sk, 'date_expiry_ms', date_expiry) end
  schedule_expiry(sid, session_record(sid))
  local view = session_view(sid)
  emit(ARGV[2], 'session.updated', now, view)
  return cjson.encode(view)
end

if status == 'closed' then
  close_session(sid, 'api', now, ARGV[2])
  return cjson.encode(session_view(sid))
end
if status ~= '' and status ~= sess.status then
  return fail(80608, 'Session ' .. sid .. ' cannot go from ' .. sess.status .. ' to ' .. status ..
    '; allowed: closed, or in-progress to re-open a closed Session')
end
if ttl ~= '' then set_session_field(sid, 'ttl', ttl) end
if date_expiry ~= '' then redis.call('HSET', sk, 'date_expiry_ms', date_expiry) end
redis.call('HSET', sk, 'updated_ms', now)
schedule_expiry(sid, session_record(sid))
local view = session_view(sid)
emit(ARGV[2], 'session.updated', now, view)
return cjson.encode(view)
