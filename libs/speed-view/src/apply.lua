-- Applies a run of one customer's records to the customer's state, atomically.
-- The encoding is documented in the crate's `state` module; keep the two in step.
--
-- KEYS[1]  the customer's key
-- ARGV[1]  generation (8 bytes): state of another generation is treated as absent
-- ARGV[2]  retention in ms (window + allowed lateness): a record with
--          ts <= clock - retention is late (skipped); events older than that are trimmed
-- ARGV[3]  the batch watermark T_b in ms (hour-aligned), or '' when unknown:
--          hourly increments of hours before T_b are dropped
-- ARGV[4]  TTL in ms of a state with no hourly increments left
-- ARGV[5]  TTL in ms of a state holding hourly increments
-- ARGV[6]  the records, in offset order: n x (offset i8, ts i8, amount i8, vendor c8, txn c8)
--
-- Returns { state, applied, late, duplicates, replayed }.
local HEADER = '<c2c8i8i8BI4I4'
local EVENT = '<i8i8c8c8'
local HOUR = '<i8i8i8i8i8'
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

local last_offset = -1
local clock = nil
local events = {}
local hours = {}

local stored = redis.call('GET', key)
if stored then
  local magic, gen, offset, stored_clock, has_clock, n_events, n_hours, pos =
    struct.unpack(HEADER, stored)
  if magic ~= 'W1' then
    return redis.error_reply('speed state of ' .. key .. ' has an unknown encoding')
  end
  if gen == generation then
    last_offset = offset
    if has_clock == 1 then clock = stored_clock end
    for i = 1, n_events do
      local ts, amount, vendor, txn
      ts, amount, vendor, txn, pos = struct.unpack(EVENT, stored, pos)
      events[i] = { ts, amount, vendor, txn }
    end
    for _ = 1, n_hours do
      local hour, sum, count, edge_sum, edge_count
      hour, sum, count, edge_sum, edge_count, pos = struct.unpack(HOUR, stored, pos)
      hours[hour] = { sum, count, edge_sum, edge_count }
    end
  end
end

local function checked(value)
  if value >= EXACT then
    error('speed state of ' .. key .. ': a sum reached 2^53 minor units')
  end
  return value
end

local applied, late, duplicates, replayed = 0, 0, 0, 0
local pos = 1
for _ = 1, #records / RECORD_SIZE do
  local offset, ts, amount, vendor, txn
  offset, ts, amount, vendor, txn, pos = struct.unpack(RECORD, records, pos)
  if offset <= last_offset then
    -- Already applied (a replay after a crash or a rebalance, or a zombie's batch).
    replayed = replayed + 1
  else
    last_offset = offset
    if clock and ts <= clock - retention then
      late = late + 1
    else
      -- Only among the events still kept (ts > clock - retention): one applied earlier
      -- in this call but already out of the retention counts as trimmed, exactly as if
      -- the call had ended before it, so decisions do not depend on batching.
      local seen = false
      for i = 1, #events do
        local event = events[i]
        if event[4] == txn and (not clock or event[1] > clock - retention) then
          seen = true
          break
        end
      end
      if seen then
        duplicates = duplicates + 1
      else
        applied = applied + 1
        events[#events + 1] = { ts, amount, vendor, txn }
        if not clock or ts > clock then clock = ts end
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
end

-- Keep what can still matter: events inside the retention, hours from T_b on.
local parts = {}
local kept = 0
for i = 1, #events do
  local event = events[i]
  if event[1] > clock - retention then
    kept = kept + 1
    parts[#parts + 1] = struct.pack(EVENT, event[1], event[2], event[3], event[4])
  end
end
local hour_keys = {}
for hour in pairs(hours) do
  if not watermark or hour >= watermark then hour_keys[#hour_keys + 1] = hour end
end
table.sort(hour_keys)
for i = 1, #hour_keys do
  local bucket = hours[hour_keys[i]]
  parts[#parts + 1] = struct.pack(HOUR, hour_keys[i], bucket[1], bucket[2], bucket[3], bucket[4])
end
local state = struct.pack(HEADER, 'W1', generation, last_offset, clock or 0,
  clock and 1 or 0, kept, #hour_keys) .. table.concat(parts)
local ttl = ttl_window
if #hour_keys > 0 then ttl = ttl_hours end
redis.call('SET', key, state, 'PX', ttl)
return { state, applied, late, duplicates, replayed }
