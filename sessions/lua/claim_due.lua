-- Claim the scheduled messages that are due, for sending: each leaves the due list and is marked
-- `sending` (a claim that expires: a sender that died while sending is found by the next claim and
-- its message marked failed, never sent a second time). One too late (more than the lateness
-- allowed) is marked `expired` instead.
-- KEYS[1]  Service prefix "ml:{KS}:"
-- ARGV[1]  now_ms or ''
-- ARGV[2]  how many at most
-- ARGV[3]  claim lifetime, ms (longer than a send with its retries)
-- The lateness allowed is the Service's `lateness_s` (ScheduleLateness; 900 s unless set).
-- Returns JSON: [{sid, session_sid, participant_sid, identifier, proxy_identifier, data}, ...]

local now = now_ms(ARGV[1])
local lateness_ms = (tonumber(svc_field('lateness_s', '900')) or 900) * 1000

-- Claims whose sender died: unknown whether Twilio took the message; never sent twice.
for _, km in ipairs(redis.call('ZRANGEBYSCORE', P .. 'sending', '-inf', now)) do
  redis.call('ZREM', P .. 'sending', km)
  settle_scheduled(km, 'failed', 'sender_died', now)
end

local claimed = {}
for _, km in ipairs(redis.call('ZRANGEBYSCORE', P .. 'due', '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))) do
  redis.call('ZREM', P .. 'due', km)
  local m = hgetall(P .. 'sm:' .. km)
  if m and m.status == 'scheduled' then
    if now - tonumber(m.send_at_ms) > lateness_ms then
      settle_scheduled(km, 'expired', 'late', now)
    else
      redis.call('HSET', P .. 'sm:' .. km, 'status', 'sending', 'updated_ms', now)
      redis.call('ZADD', P .. 'sending', now + tonumber(ARGV[3]), km)
      local part = participant_view(m.session_sid, m.participant_sid) or {}
      claimed[#claimed + 1] = {
        sid = km, session_sid = m.session_sid, participant_sid = m.participant_sid,
        identifier = part.identifier, proxy_identifier = part.proxy_identifier, data = m.data,
      }
    end
  end
end
if #claimed == 0 then return '[]' end
return cjson.encode(claimed)
