"""The Lua scripts of :mod:`switchboard_core.budget`, whose module doc describes the Redis
layout they work on (reservations, settles, loads, credit grants, resyncs). Each runs
atomically in Redis and is safe to run twice (the client retries a command whose connection
dropped).

Every key a script touches comes in ``KEYS`` (Redis Cluster routes a script by them, and
refuses keys of another slot); the keys of one script are one account's, which share a hash
slot. Scripts build hash *field* names (``reserved:<key id>``), never key names.
"""

from __future__ import annotations

# Shared by reserve and settle: a reservation's record is "<key id> <amount> <holder or ->",
# and its amount is held in the account hash twice: in ``reserved`` (the account's) and in
# ``reserved:<key id>`` (the key's), a field dropped when it comes back to 0.
_RELEASE = """
local function negated(amount)
  if amount == '0' then return '0' end
  return '-' .. amount
end
local function release(acct, rec)
  local k, amt = string.match(rec, '^(%S+) (%S+)')
  local field = 'reserved:' .. k
  if redis.call('HINCRBY', acct, field, negated(amt)) == 0 then
    redis.call('HDEL', acct, field)
  end
  redis.call('HINCRBY', acct, 'reserved', negated(amt))
end
"""

# KEYS: key hash, account hash, reservation records, expiries. ARGV: reservation id, amount,
# now (ms), expiry (ms), day field, month field, total, daily and monthly limits (-1: none),
# prepaid ('1'), key id, holder. Returns {1, key epoch, account epoch} or {0, window, left}.
RESERVE = (
    _RELEASE
    + """
if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 1 then
  return {1, '?', '?'}  -- a retry of a reserve that went through (epochs unknown)
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', ARGV[3], 'LIMIT', 0, 100)
for _, rid in ipairs(expired) do
  local rec = redis.call('HGET', KEYS[3], rid)
  if rec then
    release(KEYS[2], rec)
    redis.call('HDEL', KEYS[3], rid)
  end
  redis.call('ZREM', KEYS[4], rid)
end
local amount = tonumber(ARGV[2])
local k = redis.call('HMGET', KEYS[1], 'spent_total', ARGV[5], ARGV[6])
local reserved = tonumber(redis.call('HGET', KEYS[2], 'reserved:' .. ARGV[11]) or '0')
local windows = {{'total', ARGV[7], k[1]}, {'daily', ARGV[8], k[2]}, {'monthly', ARGV[9], k[3]}}
for _, w in ipairs(windows) do
  local limit = tonumber(w[2])
  if limit >= 0 then
    local spent = tonumber(w[3] or '0')
    if spent + reserved + amount > limit then
      return {0, w[1], tostring(limit - spent - reserved)}
    end
  end
end
if ARGV[10] == '1' then
  local a = redis.call('HMGET', KEYS[2], 'credit', 'spent', 'reserved')
  local left = tonumber(a[1] or '0') - tonumber(a[2] or '0') - tonumber(a[3] or '0')
  if amount > left then
    return {0, 'credit', tostring(left)}
  end
end
local holder = ARGV[12]
if holder == '' then holder = '-' end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[11] .. ' ' .. ARGV[2] .. ' ' .. holder)
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
redis.call('HINCRBY', KEYS[2], 'reserved:' .. ARGV[11], ARGV[2])
redis.call('HINCRBY', KEYS[2], 'reserved', ARGV[2])
-- the hashes' epochs: how often metering loaded or raised them (a late settle's test)
local key_raises = redis.call('HGET', KEYS[1], 'raises') or '0'
return {1, key_raises, redis.call('HGET', KEYS[2], 'raises') or '0'}
"""
)

# KEYS: key hash, account hash, reservation records, expiries, the reservation's settled
# marker. ARGV: reservation id, actual cost, day field, month field, mode, the key's and the
# account's epochs at reserve time, the marker's TTL (s), the holder (mode 'sweep').
# Modes: '0' a router's settle; '1' late (replayed from a router's spool: only a reservation
# still held, its cost counted only on a hash no load or resync raised since it was made);
# 'sweep' metering settling a dead router's reservation (only one that router still holds).
# Returns 1 when this call settled it.
SETTLE = (
    _RELEASE
    + """
local function settle(actual)
  if not redis.call('SET', KEYS[5], '1', 'NX', 'EX', ARGV[8]) then
    return 0  -- settled already: a retry, or the router and a sweep both settling
  end
  local rec = redis.call('HGET', KEYS[3], ARGV[1])
  if rec then
    release(KEYS[2], rec)
    redis.call('HDEL', KEYS[3], ARGV[1])
    redis.call('ZREM', KEYS[4], ARGV[1])
  end
  redis.call('HINCRBY', KEYS[1], 'spent_total', actual)
  redis.call('HINCRBY', KEYS[1], ARGV[3], actual)
  redis.call('HINCRBY', KEYS[1], ARGV[4], actual)
  redis.call('HINCRBY', KEYS[2], 'spent', actual)
  return 1
end
if ARGV[5] == 'sweep' then
  local rec = redis.call('HGET', KEYS[3], ARGV[1])
  if not rec or string.match(rec, '(%S+)$') ~= ARGV[9] then
    return 0  -- settled already, expired, or another router's
  end
  local done = settle(ARGV[2])
  -- the router may only have been cut off: its own settle may come as late as a request may
  -- last, and must still find the marker
  redis.call('EXPIRE', KEYS[5], ARGV[8])
  return done
end
if ARGV[5] == '1' then
  if redis.call('HEXISTS', KEYS[3], ARGV[1]) == 0 then
    return 0
  end
  if settle('0') == 0 then
    return 0
  end
  if (redis.call('HGET', KEYS[1], 'raises') or '0') == ARGV[6] then
    redis.call('HINCRBY', KEYS[1], 'spent_total', ARGV[2])
    redis.call('HINCRBY', KEYS[1], ARGV[3], ARGV[2])
    redis.call('HINCRBY', KEYS[1], ARGV[4], ARGV[2])
  end
  if (redis.call('HGET', KEYS[2], 'raises') or '0') == ARGV[7] then
    redis.call('HINCRBY', KEYS[2], 'spent', ARGV[2])
  end
  return 1
end
return settle(ARGV[2])
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

# KEYS: the account hash, the grant's marker. Adds ARGV[1] to the credit unless the marker
# exists (a retry).
ADD_CREDIT = """
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', 86400) then
  return 0
end
redis.call('HINCRBY', KEYS[1], 'credit', ARGV[1])
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
