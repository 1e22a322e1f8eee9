"""The Lua scripts of :mod:`switchboard_core.budget`, whose module doc describes the Redis
layout they work on (reservations, settles, loads, credit grants, resyncs). Each runs
atomically in Redis and is safe to run twice (the client retries a command whose connection
dropped).
"""

from __future__ import annotations

RESERVE = """
local prefix = ARGV[1]
if redis.call('EXISTS', prefix .. 'res:' .. ARGV[2]) == 1 then
  return {1, '?', '?'}  -- a retry of a reserve that went through (epochs unknown)
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[4], 'LIMIT', 0, 100)
for _, rid in ipairs(expired) do
  local rec = redis.call('GET', prefix .. 'res:' .. rid)
  if rec then
    local k, a, amt = string.match(rec, '^(%S+) (%S+) (%S+)$')
    redis.call('HINCRBY', prefix .. 'key:' .. k, 'reserved', -tonumber(amt))
    redis.call('HINCRBY', prefix .. 'acct:' .. a, 'reserved', -tonumber(amt))
    redis.call('DEL', prefix .. 'res:' .. rid)
  end
  redis.call('ZREM', KEYS[3], rid)
end
local amount = tonumber(ARGV[3])
local k = redis.call('HMGET', KEYS[1], 'spent_total', ARGV[6], ARGV[7], 'reserved')
local reserved = tonumber(k[4] or '0')
local windows = {{'total', ARGV[8], k[1]}, {'daily', ARGV[9], k[2]}, {'monthly', ARGV[10], k[3]}}
for _, w in ipairs(windows) do
  local limit = tonumber(w[2])
  if limit >= 0 then
    local spent = tonumber(w[3] or '0')
    if spent + reserved + amount > limit then
      return {0, w[1], tostring(limit - spent - reserved)}
    end
  end
end
if ARGV[11] == '1' then
  local a = redis.call('HMGET', KEYS[2], 'credit', 'spent', 'reserved')
  local left = tonumber(a[1] or '0') - tonumber(a[2] or '0') - tonumber(a[3] or '0')
  if amount > left then
    return {0, 'credit', tostring(left)}
  end
end
redis.call('SET', prefix .. 'res:' .. ARGV[2], ARGV[12] .. ' ' .. ARGV[13] .. ' ' .. ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[2])
if ARGV[14] and ARGV[14] ~= '' then
  redis.call('SADD', prefix .. 'held:' .. ARGV[14], ARGV[2])
end
redis.call('HINCRBY', KEYS[1], 'reserved', amount)
redis.call('HINCRBY', KEYS[2], 'reserved', amount)
-- the hashes' epochs: how often metering loaded or raised them (a late settle's test)
local key_raises = redis.call('HGET', KEYS[1], 'raises') or '0'
return {1, key_raises, redis.call('HGET', KEYS[2], 'raises') or '0'}
"""

# settle(prefix, reservation id, key hash, account hash, expiry set, actual, day field, month
# field): releases the reservation and counts the actual cost, once (the settled marker);
# returns 1 when it did. Shared with the liveness sweep, which settles a dead router's
# reservations in its own script.
SETTLE_FUNCTION = """
local function settle(prefix, rid, key, acct, expiries, actual, day, month)
  if not redis.call('SET', prefix .. 'settled:' .. rid, '1', 'NX', 'EX', 600) then
    return 0  -- settled already: a retry, or the router and a sweep both settling
  end
  local rec = redis.call('GET', prefix .. 'res:' .. rid)
  if rec then
    local amt = tonumber(string.match(rec, '(%S+)$'))
    redis.call('HINCRBY', key, 'reserved', -amt)
    redis.call('HINCRBY', acct, 'reserved', -amt)
    redis.call('DEL', prefix .. 'res:' .. rid)
    redis.call('ZREM', expiries, rid)
  end
  redis.call('HINCRBY', key, 'spent_total', actual)
  redis.call('HINCRBY', key, day, actual)
  redis.call('HINCRBY', key, month, actual)
  redis.call('HINCRBY', acct, 'spent', actual)
  return 1
end
"""

SETTLE = (
    SETTLE_FUNCTION
    + """
if ARGV[6] and ARGV[6] ~= '' then
  redis.call('SREM', ARGV[1] .. 'held:' .. ARGV[6], ARGV[2])
end
if ARGV[7] == '1' then
  -- late (replayed from a router's spool): only a reservation still held; the cost counts on
  -- a hash no resync or load raised since the reservation (ARGV[8], ARGV[9]: its epochs)
  if redis.call('EXISTS', ARGV[1] .. 'res:' .. ARGV[2]) == 0 then
    return 0
  end
  if settle(ARGV[1], ARGV[2], KEYS[1], KEYS[2], KEYS[3], '0', ARGV[4], ARGV[5]) == 0 then
    return 0
  end
  if (redis.call('HGET', KEYS[1], 'raises') or '0') == ARGV[8] then
    redis.call('HINCRBY', KEYS[1], 'spent_total', ARGV[3])
    redis.call('HINCRBY', KEYS[1], ARGV[4], ARGV[3])
    redis.call('HINCRBY', KEYS[1], ARGV[5], ARGV[3])
  end
  if (redis.call('HGET', KEYS[2], 'raises') or '0') == ARGV[9] then
    redis.call('HINCRBY', KEYS[2], 'spent', ARGV[3])
  end
  return 1
end
return settle(ARGV[1], ARGV[2], KEYS[1], KEYS[2], KEYS[3], ARGV[3], ARGV[4], ARGV[5])
"""
)


# Writes counters (field, value pairs from ARGV[2]) and marks the hash loaded; unless
# ARGV[1] is '1', leaves a hash that is already loaded alone. Returns 1 when it wrote.
LOAD = """
if ARGV[1] ~= '1' and redis.call('HEXISTS', KEYS[1], 'loaded') == 1 then
  return 0
end
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('HSET', KEYS[1], 'loaded', '1')
redis.call('HINCRBY', KEYS[1], 'raises', 1)
return 1
"""
LOADED_FIELD = "loaded"

# Adds ARGV[2] to the hash's credit unless the grant marker ARGV[1] exists (a retry).
ADD_CREDIT = """
if not redis.call('SET', ARGV[1], '1', 'NX', 'EX', 86400) then
  return 0
end
redis.call('HINCRBY', KEYS[1], 'credit', ARGV[2])
return 1
"""

# Raises counters (field, value pairs from ARGV) of a loaded hash to at least the given
# values, comparing the decimal strings exactly (Lua doubles would round past 2^53), and
# deletes the day and month counters of days and months past (no reserve reads them again).
# Returns how many counters it raised.
RAISE = """
if redis.call('HEXISTS', KEYS[1], 'loaded') == 0 then
  return 0
end
local current = {}
local raised = 0
for i = 1, #ARGV, 2 do
  current[ARGV[i]] = true
  local cur = redis.call('HGET', KEYS[1], ARGV[i]) or '0'
  local want = ARGV[i + 1]
  if #cur < #want or (#cur == #want and cur < want) then
    redis.call('HSET', KEYS[1], ARGV[i], want)
    raised = raised + 1
  end
end
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  local windowed = string.sub(field, 1, 8) == 'spent_d:' or string.sub(field, 1, 8) == 'spent_m:'
  if windowed and not current[field] then
    redis.call('HDEL', KEYS[1], field)
  end
end
if raised > 0 then
  redis.call('HINCRBY', KEYS[1], 'raises', 1)
end
return raised
"""
