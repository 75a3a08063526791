-- Applies a run of one customer's records to the customer's state, atomically.
-- The encoding is documented in the crate's `state` module; keep the two in step.
--
-- KEYS[1]  the customer's key
-- ARGV[1]  generation (8 bytes): state of another generation is treated as absent
-- ARGV[2]  retention in ms (window + allowed lateness): a record with
--          ts <= clock - retention is late (skipped); events older than that no longer
--          matter and are trimmed, in bulk, once the oldest held one is a quarter of the
--          retention past it
-- ARGV[3]  the batch watermark T_b in ms (hour-aligned), or '' when unknown:
--          hourly increments of hours before T_b are dropped
-- ARGV[4]  TTL in ms of a state with no hourly increments left
-- ARGV[5]  TTL in ms of a state holding hourly increments
-- ARGV[6]  the records, in offset order: n x (offset i8, ts i8, amount i8, vendor c8, txn c8)
--
-- The cost of a call does not grow with the events held: they stay one string, copied
-- as is, searched with string.find for a duplicate and for the vendor, and unpacked
-- only to trim.
--
-- Returns { state, applied, late, duplicates, replayed, outcomes }: `outcomes` has one
-- byte per record, in the records' order: 'r' replayed, 'l' late, 'd' duplicate, and for
-- an applied record 's' when the customer had used its vendor before it, 'n' when not.
-- "Used before" means: among the events the duplicate check consults for the record
-- (every event applied before it, in an earlier call or earlier in this run, with
-- ts > C - retention, C the customer's clock before the record), one has the record's
-- vendor digest. Such an event is of another transaction, or the record would be a
-- duplicate. The answer depends only on the records in offset order, like every other
-- decision here, not on batching or on when trimming ran.
local HEADER = '<c2c8i8i8Bi8I4I4'
local HEADER_SIZE = 43
local EVENT = '<i8i8c8c8'
local EVENT_SIZE = 32
local VENDOR_AT = 16 -- the vendor digest's place in an event
local TXN_AT = 24 -- the transaction digest's place in an event
local HOUR = '<i8i8i8i8i8'
local HOUR_SIZE = 40
local RECORD = '<i8i8i8c8c8'
local RECORD_SIZE = 40
local HOUR_MS = 3600000
local EXACT = 9007199254740992 -- 2^53: beyond it a Lua number is no longer exact

local key = KEYS[1]
local generation = ARGV[1]
local retention = tonumber(ARGV[2])
local watermark = tonumber(ARGV[3])
local ttl_window = tonumber(ARGV[4])
local ttl_hours = tonumber(ARGV[5])
local records = ARGV[6]
local slack = math.floor(retention / 4)

local last_offset = -1
local clock = nil
local oldest = nil -- the smallest ts among the held events
local held = '' -- the held events, as stored
local hours = {}

local stored = redis.call('GET', key)
if stored then
  if string.sub(stored, 1, 2) ~= 'W2' or #stored < HEADER_SIZE then
    return redis.error_reply('speed state of ' .. key .. ' has an unknown encoding')
  end
  local _, gen, offset, stored_clock, has_clock, stored_oldest, n_events, n_hours, pos =
    struct.unpack(HEADER, stored)
  if gen == generation then
    last_offset = offset
    if has_clock == 1 then clock = stored_clock end
    for _ = 1, n_hours do
      local hour, sum, count, edge_sum, edge_count
      hour, sum, count, edge_sum, edge_count, pos = struct.unpack(HOUR, stored, pos)
      hours[hour] = { sum, count, edge_sum, edge_count }
    end
    if n_events > 0 then
      oldest = stored_oldest
      held = string.sub(stored, pos)
    end
  end
end

local function checked(value)
  if value >= EXACT then
    error('speed state of ' .. key .. ': a sum reached 2^53 minor units')
  end
  return value
end

-- Whether `events` (packed) holds transaction `txn` with ts > floor.
local function holds(events, txn, floor)
  local from = 1
  while true do
    local at = string.find(events, txn, from, true)
    if not at then return false end
    if (at - 1) % EVENT_SIZE == TXN_AT then
      local ts = struct.unpack('<i8', events, at - TXN_AT)
      if ts > floor then return true end
    end
    from = at + 1
  end
end

-- Whether `events` (packed) holds an event at vendor `vendor` with ts > floor.
local function uses(events, vendor, floor)
  local from = 1
  while true do
    local at = string.find(events, vendor, from, true)
    if not at then return false end
    if (at - 1) % EVENT_SIZE == VENDOR_AT then
      local ts = struct.unpack('<i8', events, at - VENDOR_AT)
      if ts > floor then return true end
    end
    from = at + 1
  end
end

local added = {}
local outcomes = {}
local applied, late, duplicates, replayed = 0, 0, 0, 0
local pos = 1
for i = 1, #records / RECORD_SIZE do
  local offset, ts, amount, vendor, txn
  offset, ts, amount, vendor, txn, pos = struct.unpack(RECORD, records, pos)
  if offset <= last_offset then
    -- Already applied (a replay after a crash or a rebalance, or a zombie's batch).
    replayed = replayed + 1
    outcomes[i] = 'r'
  elseif clock and ts <= clock - retention then
    last_offset = offset
    late = late + 1
    outcomes[i] = 'l'
  else
    last_offset = offset
    -- Only among the events still inside the retention (ts > clock - retention): one
    -- held past it counts as trimmed, whether or not it still is, so decisions depend
    -- neither on batching nor on when trimming ran. The same events tell whether the
    -- customer used the vendor before.
    local floor = clock and clock - retention
    local fresh = '' -- the events applied earlier in this run, packed
    if clock and #added > 0 then fresh = table.concat(added) end
    if clock and (holds(held, txn, floor) or holds(fresh, txn, floor)) then
      duplicates = duplicates + 1
      outcomes[i] = 'd'
    else
      applied = applied + 1
      if clock and (uses(held, vendor, floor) or uses(fresh, vendor, floor)) then
        outcomes[i] = 's'
      else
        outcomes[i] = 'n'
      end
      added[#added + 1] = struct.pack(EVENT, ts, amount, vendor, txn)
      if not clock or ts > clock then clock = ts end
      if not oldest or ts < oldest then oldest = ts end
      local hour = ts - ts % HOUR_MS
      local bucket = hours[hour]
      if not bucket then
        bucket = { 0, 0, 0, 0 }
        hours[hour] = bucket
      end
      bucket[1] = checked(bucket[1] + amount)
      bucket[2] = bucket[2] + 1
      if ts == hour then
        bucket[3] = checked(bucket[3] + amount)
        bucket[4] = bucket[4] + 1
      end
    end
  end
end

-- Keep what can still matter: events inside the retention (trimmed in bulk), hours
-- from T_b on.
local events = held .. table.concat(added)
if oldest and oldest <= clock - retention - slack then
  local kept = {}
  oldest = nil
  for at = 1, #events, EVENT_SIZE do
    local ts = struct.unpack('<i8', events, at)
    if ts > clock - retention then
      kept[#kept + 1] = string.sub(events, at, at + EVENT_SIZE - 1)
      if not oldest or ts < oldest then oldest = ts end
    end
  end
  events = table.concat(kept)
end
local hour_keys = {}
for hour in pairs(hours) do
  if not watermark or hour >= watermark then hour_keys[#hour_keys + 1] = hour end
end
table.sort(hour_keys)
local parts = {}
for i = 1, #hour_keys do
  local bucket = hours[hour_keys[i]]
  parts[i] = struct.pack(HOUR, hour_keys[i], bucket[1], bucket[2], bucket[3], bucket[4])
end
local state = struct.pack(HEADER, 'W2', generation, last_offset, clock or 0,
  clock and 1 or 0, oldest or 0, #events / EVENT_SIZE, #hour_keys)
  .. table.concat(parts) .. events
local ttl = ttl_window
if #hour_keys > 0 then ttl = ttl_hours end
redis.call('SET', key, state, 'PX', ttl)
return { state, applied, late, duplicates, replayed, table.concat(outcomes) }
