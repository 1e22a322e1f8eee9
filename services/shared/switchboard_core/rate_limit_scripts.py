"""The Lua scripts of :mod:`switchboard_core.rate_limits`, whose module doc describes the
algorithm (GCRA, concurrency leases) and the Redis layout they work on.

Every script reads the time once, from ``ARGV[1]``: microseconds since the epoch, or ``''``
for Redis's own ``TIME`` (what the routers use: one clock for every router). Times are whole
microseconds; doubles hold them exactly (2**53 microseconds is 285 years), and every number a
script writes goes through ``string.format('%d', ...)`` because Lua's ``tostring`` (and the
conversion ``redis.call`` applies to a number) keeps only 14 significant digits.

The client retries a command whose connection dropped (:mod:`switchboard_core.redis_client`),
so a script may run twice: a release or a renewal run twice changes nothing more; an admit or
a tokens correction run twice charges or corrects twice. That costs one request's worth on a
connection dropped mid-command, where making them idempotent would cost a marker key per
request; the limits are throughput limits, not money.
"""

from __future__ import annotations

# Shared prologue: the time, and how to write a whole number.
_NOW = """
local function now_us()
  if ARGV[1] ~= '' then return tonumber(ARGV[1]) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function int(x) return string.format('%d', x) end
-- A GCRA state (its theoretical arrival time) is kept only while it is ahead of now: one
-- that is not is the same as none.
local function set_tat(key, tat, now)
  if tat > now then
    redis.call('SET', key, int(tat), 'PX', int(math.ceil((tat - now) / 1000)))
  else
    redis.call('DEL', key)
  end
end
-- A key that holds lease expiries lives at least as long as its latest lease.
local function keep_until(key, ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, int(ms)) end
end
"""

# admit(KEYS: one per limit; ARGV: now, lease id, lease microseconds, then for each limit a
# kind and a number). Kind 'g': a GCRA state (the number: this request's increment in
# microseconds; the burst is one minute); kind 'c': a set of concurrency leases (the number:
# how many may be held). Either every limit admits and all are charged, or none is:
# returns {1}, or {0, i, wait_us, j, wait_us, ...} naming every limit that refused (1-based)
# and when it would admit (-1 for a full lease set: nobody knows when a holder finishes).
ADMIT = (
    _NOW
    + """
local WINDOW = 60000000
local now = now_us()
local lease, lease_us = ARGV[2], tonumber(ARGV[3])
local refused = {0}
local tats = {}
for i = 1, #KEYS do
  local kind, n = ARGV[2 + 2 * i], tonumber(ARGV[3 + 2 * i])
  if kind == 'g' then
    local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
    if tat < now then tat = now end
    local wait = tat + n - WINDOW - now
    if wait > 0 then
      refused[#refused + 1] = i
      refused[#refused + 1] = wait
    end
    tats[i] = tat + n
  else
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', int(now))  -- dead holders' leases
    if redis.call('ZCARD', KEYS[i]) >= n then
      refused[#refused + 1] = i
      refused[#refused + 1] = -1
    end
  end
end
if #refused > 1 then return refused end
for i = 1, #KEYS do
  if ARGV[2 + 2 * i] == 'g' then
    set_tat(KEYS[i], tats[i], now)
  else
    redis.call('ZADD', KEYS[i], int(now + lease_us), lease)
    keep_until(KEYS[i], math.ceil(lease_us / 1000))
  end
end
return {1}
"""
)

# finish(KEYS: the lease sets, then the GCRA states to correct; ARGV: now, lease id, how many
# lease sets, then one signed correction in microseconds per GCRA state). Releases the lease
# and moves each state by its correction: a charge from max(TAT, now), a refund never below
# now (time already past cannot be given back).
FINISH = (
    _NOW
    + """
local now = now_us()
local leases = tonumber(ARGV[3])
for i = 1, leases do
  redis.call('ZREM', KEYS[i], ARGV[2])
end
for i = leases + 1, #KEYS do
  local d = tonumber(ARGV[3 + i - leases])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  local new
  if d >= 0 then
    new = math.max(tat, now) + d
  else
    new = math.max(tat + d, now)
  end
  set_tat(KEYS[i], new, now)
end
return 1
"""
)

# renew(KEYS: lease sets of one slot; ARGV: now, lease id, lease microseconds): pushes the
# lease's expiry to now + lease where it is still held (XX: a lease already dropped as
# expired is not brought back; its request runs on without a slot). Returns how many held it.
RENEW = (
    _NOW
    + """
local now = now_us()
local lease_us = tonumber(ARGV[3])
local held = 0
for i = 1, #KEYS do
  held = held + redis.call('ZADD', KEYS[i], 'XX', 'CH', int(now + lease_us), ARGV[2])
  keep_until(KEYS[i], math.ceil(lease_us / 1000))
end
return held
"""
)
