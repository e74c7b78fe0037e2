-- Settle the relays whose webhook never answered: the worker died (kill -9, OOM) after the route
-- script recorded the interaction and before the TwiML left. route_inbound.lua indexes each
-- recorded interaction in `inflight` by its webhook's deadline; the answer writer replaces the
-- `seen:` marker ":KI" with "<replay>:KI" once answered and takes the interaction off the index
-- (relay/state.py AnswerWriter), so what is left is mostly unanswered. An interaction still on
-- record as relay whose marker says unanswered well after the deadline was never relayed: it is
-- marked not_relayed (reason "unanswered") and its interaction.updated event emitted.
-- KEYS[1]  Service prefix "ml:{KS}:"
-- ARGV[1]  now_ms or '' (server TIME: the index holds real deadlines)
-- ARGV[2]  event id base: 28 hex chars; the script appends 4 hex per settled interaction
-- ARGV[3]  grace ms after a deadline before an entry is judged (the answer writer's flush)
-- ARGV[4]  at most this many entries per call
-- Returns {judged, settled}.

local now = now_ms(ARGV[1])
local due = redis.call('ZRANGEBYSCORE', P .. 'inflight', '-inf', now - tonumber(ARGV[3]),
  'LIMIT', 0, tonumber(ARGV[4]))
if #due > 0 then redis.call('ZREM', P .. 'inflight', unpack(due)) end
local settled = 0
for i, ki in ipairs(due) do
  -- (nearly every one was answered: two fields and its marker tell, before anything else is read)
  local f = redis.call('HMGET', P .. 'ix:' .. ki, 'outcome', 'inbound_resource_sid')
  local outcome, resource = f[1], f[2]
  if outcome == 'relay' and resource then
    local seen = redis.call('GET', P .. 'seen:' .. resource)
    if seen and string.sub(seen, 1, 1) == ':' then
      redis.call('HSET', P .. 'ix:' .. ki, 'outcome', 'not_relayed', 'outbound_resource_status', 'failed',
        'updated_ms', now)
      local view = with_numbers(interaction_stored(ki))
      view.reason = 'unanswered'
      emit(ARGV[2] .. string.format('%04x', i % 65536), 'interaction.updated', now, view)
      settled = settled + 1
    end
  end
end
return { #due, settled }
