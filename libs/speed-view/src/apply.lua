#!lua flags=allow-cross-slot-keys
-- Applies runs of records, one run per customer and many customers in one call: each
-- run to its customer's state, all of them atomically (no other command runs in
-- between, and a call that fails writes nothing: every state is computed before the
-- first is written). The encoding is documented in the crate's `state` module; keep the
-- two in step.
--
-- The flag on the first line lets one call touch keys of many slots. It has no effect
-- on a standalone Redis; on a cluster the keys of one call must live on one node (the
-- caller groups them, see `apply.rs`), which is also why the script reads with one GET
-- per key: a single command inside a script may still not span slots.
--
-- KEYS[i]      the key of run i's customer. A key may come more than once: its later run
--              starts from the state the earlier one left.
-- ARGV[1]      generation (8 bytes): state of another generation is treated as absent
-- ARGV[2]      retention in ms (window + allowed lateness): a record with
--              ts <= clock - retention is late (skipped); events older than that no
--              longer matter and are trimmed, in bulk, once the oldest held one is a
--              quarter of the retention past it
-- ARGV[3]      the batch watermark T_b in ms (hour-aligned), or '' when unknown:
--              hourly increments of hours before T_b are dropped
-- ARGV[4]      TTL in ms of a state with no hourly increments left
-- ARGV[5]      TTL in ms of a state holding hourly increments
-- ARGV[5 + i]  run i's records, in offset order: n x (offset i8, ts i8, amount i8,
--              vendor c8, txn c8)
--
-- The events held stay one string, copied as is and unpacked only to trim. A short run
-- searches it with string.find for a duplicate and for the vendor, record by record; a
-- run of INDEX_RUN records or more (a hot customer: a bot, a card under test) first
-- indexes the transactions and vendors of the held events (digest -> newest ts) and
-- looks each record up there, so its cost grows with the events held once, not once
-- per record. Both give the same answers.
--
-- Returns two strings per run, in KEYS' order: the customer's state after it, and one
-- byte per record of the run, in the records' order: 'l' late, 'd' duplicate; for an
-- applied record 's' when the customer had used its vendor before it, 'n' when not;
-- for a replayed record (at or before the last applied offset) 'S' or 'N' when the very
-- same event (time, amount, vendor, transaction) is held with ts > C - retention, with
-- the byte recorded when it was applied, and 'r' when not. "Used before" means: among
-- the events the duplicate check consults for the record (every event applied before
-- it, in an earlier call or earlier in this run, with ts > C - retention, C the
-- customer's clock before the record), one has the record's vendor digest. Such an
-- event is of another transaction, or the record would be a duplicate. The answer
-- depends only on the records in offset order, like every other decision here, not on
-- batching or on when trimming ran; and it is kept with the event, so that a replay of
-- the record after a crash gets the same answer as its first delivery.
local HEADER = '<c2c8i8i8Bi8I4I4'
local HEADER_SIZE = 43
local EVENT = '<i8i8c8c8c1'
local EVENT_SIZE = 33
local CORE = '<i8i8c8c8' -- an event without its vendor byte, as a record packs it
local CORE_SIZE = 32
local SEEN_AT = 32 -- the vendor byte's place in an event: 's', 'n', or '?' (unknown)
local LEGACY_EVENT_SIZE = 32 -- layout W2: events without the vendor byte
local VENDOR_AT = 16 -- the vendor digest's place in an event
local TXN_AT = 24 -- the transaction digest's place in an event
local HOUR = '<i8i8i8i8i8'
local RECORD = '<i8i8i8c8c8'
local RECORD_SIZE = 40
local HOUR_MS = 3600000
local EXACT = 9007199254740992 -- 2^53: beyond it a Lua number is no longer exact
local INDEX_RUN = 32 -- records of one run from which the held events are indexed

local runs = #KEYS
if #ARGV ~= 5 + runs then
  return redis.error_reply('apply: ' .. runs .. ' keys but ' .. (#ARGV - 5) .. ' runs')
end
local generation = ARGV[1]
local retention = tonumber(ARGV[2])
local watermark = tonumber(ARGV[3])
local ttl_window = tonumber(ARGV[4])
local ttl_hours = tonumber(ARGV[5])
local slack = math.floor(retention / 4)

-- What a call costs is mostly what it allocates: every string made here (a copy of
-- the events, a concatenation) costs Redis its copy and, later, the Lua collector's
-- time, about 1 µs for a customer's 700 bytes, and every table about 0.3 µs. So the
-- held events are searched where they lie in the stored value, the hourly increments
-- are one flat array, and a state is made by one concatenation.

local function checked(key, value)
  if value >= EXACT then
    error('speed state of ' .. key .. ': a sum reached 2^53 minor units')
  end
  return value
end

-- Whether the events packed in `events` from position `first` on hold the 8 bytes
-- `digest` at `place` of an event with ts > floor: the transaction digest (duplicate
-- check) or the vendor digest.
local function holds(events, first, digest, place, floor)
  local from = first
  while true do
    local at = string.find(events, digest, from, true)
    if not at then return false end
    if (at - first) % EVENT_SIZE == place then
      local ts = struct.unpack('<i8', events, at - place)
      if ts > floor then return true end
    end
    from = at + 1
  end
end

-- An index of digests (the transaction's or the vendor's) to the newest ts of an event
-- holding it: `holds` for many lookups.
local function note(index, digest, ts)
  local newest = index[digest]
  if not newest or ts > newest then index[digest] = ts end
end

-- The indexes of the transactions and of the vendors of the events packed in `events`
-- from position `first` on, in one pass.
local function indexed(events, first)
  local txns, vendors = {}, {}
  for at = first, #events, EVENT_SIZE do
    local ts = struct.unpack('<i8', events, at)
    note(txns, string.sub(events, at + TXN_AT, at + TXN_AT + 7), ts)
    note(vendors, string.sub(events, at + VENDOR_AT, at + VENDOR_AT + 7), ts)
  end
  return txns, vendors
end

local function in_index(index, digest, floor)
  local newest = index[digest]
  return newest ~= nil and newest > floor
end

-- Whether an event held (packed in `held` from `held_at` on, if any) or applied by the
-- run (packed in `added`) holds `digest` at `place` with ts > floor; looked up in
-- `index` (of both) when the run has one.
local function seen_before(index, held, held_at, added, digest, place, floor)
  if index then return in_index(index, digest, floor) end
  return (held_at and holds(held, held_at, digest, place, floor))
    or holds(added, 1, digest, place, floor)
end

-- Where the packed event `core` (CORE) starts among the events packed in `events` from
-- position `first` on, if it is there.
local function find_event(events, first, core)
  local from = first
  while true do
    local at = string.find(events, core, from, true)
    if not at then return nil end
    if (at - first) % EVENT_SIZE == 0 then return at end
    from = at + 1
  end
end

-- The events of a W2 state (from `first` on) in this layout, their vendor byte unknown.
local function upgraded(stored, first)
  local events = {}
  for at = first, #stored, LEGACY_EVENT_SIZE do
    events[#events + 1] = string.sub(stored, at, at + LEGACY_EVENT_SIZE - 1) .. '?'
  end
  return table.concat(events)
end

-- Applies `records` to `stored` (the customer's state, or false); returns the new state,
-- the TTL to write it with, and one outcome byte per record.
local function apply_run(key, stored, records)
  local last_offset = -1
  local clock = nil
  local oldest = nil -- the smallest ts among the held events
  -- The held events, if any: packed in `held` from position `held_at` on (the stored
  -- value itself, or its events upgraded from layout W2).
  local held = nil
  local held_at = nil
  local hours = {} -- hour, sum, count, edge sum, edge count; ... ascending by hour
  local n_hours = 0

  if stored then
    local magic = string.sub(stored, 1, 2)
    if (magic ~= 'W3' and magic ~= 'W2') or #stored < HEADER_SIZE then
      error('speed state of ' .. key .. ' has an unknown encoding')
    end
    local _, gen, offset, stored_clock, has_clock, stored_oldest, n_events, stored_hours, pos =
      struct.unpack(HEADER, stored)
    if gen == generation then
      last_offset = offset
      if has_clock == 1 then clock = stored_clock end
      for i = 0, stored_hours - 1 do
        local b = 5 * i
        hours[b + 1], hours[b + 2], hours[b + 3], hours[b + 4], hours[b + 5], pos =
          struct.unpack(HOUR, stored, pos)
      end
      n_hours = stored_hours
      if n_events > 0 then
        oldest = stored_oldest
        if magic == 'W2' then
          held, held_at = upgraded(stored, pos), 1
        else
          held, held_at = stored, pos
        end
      end
    end
  end

  local added = '' -- the events applied by this run, packed (in a long run: at the end)
  local outcomes = ''
  -- A long run: the transactions and vendors of every event held or applied by it, and
  -- the packed events and outcomes gathered in tables, concatenated once.
  local n_records = #records / RECORD_SIZE
  local txns, vendors, added_parts, outcome_parts = nil, nil, nil, nil
  if n_records >= INDEX_RUN then
    txns, vendors, added_parts, outcome_parts = {}, {}, {}, {}
    if held_at then txns, vendors = indexed(held, held_at) end
  end
  local pos = 1
  for _ = 1, n_records do
    local offset, ts, amount, vendor, txn
    offset, ts, amount, vendor, txn, pos = struct.unpack(RECORD, records, pos)
    local outcome
    if offset <= last_offset then
      -- Already delivered (a replay after a crash or a rebalance, or a zombie's batch).
      -- When it was applied and is still held, its first answer is told again, so the
      -- replay's window update can list it as the first delivery's did.
      outcome = 'r'
      if held_at and clock and ts > clock - retention then
        local at = find_event(held, held_at, struct.pack(CORE, ts, amount, vendor, txn))
        if at then
          local seen = string.sub(held, at + SEEN_AT, at + SEEN_AT)
          if seen == 's' then outcome = 'S' elseif seen == 'n' then outcome = 'N' end
        end
      end
    elseif clock and ts <= clock - retention then
      last_offset = offset
      outcome = 'l'
    else
      last_offset = offset
      -- Only among the events still inside the retention (ts > clock - retention): one
      -- held past it counts as trimmed, whether or not it still is, so decisions depend
      -- neither on batching nor on when trimming ran. The same events tell whether the
      -- customer used the vendor before.
      local floor = clock and clock - retention
      if clock and seen_before(txns, held, held_at, added, txn, TXN_AT, floor) then
        outcome = 'd'
      else
        if clock and seen_before(vendors, held, held_at, added, vendor, VENDOR_AT, floor) then
          outcome = 's'
        else
          outcome = 'n'
        end
        local event = struct.pack(EVENT, ts, amount, vendor, txn, outcome)
        if txns then
          added_parts[#added_parts + 1] = event
          note(txns, txn, ts)
          note(vendors, vendor, ts)
        else
          added = added .. event
        end
        if not clock or ts > clock then clock = ts end
        if not oldest or ts < oldest then oldest = ts end
        local hour = ts - ts % HOUR_MS
        -- The hour's place in `hours`, which stays ascending; usually the last one.
        local at = 5 * n_hours + 1
        while at > 1 and hours[at - 5] >= hour do at = at - 5 end
        if hours[at] ~= hour then
          for i = 5 * n_hours, at, -1 do hours[i + 5] = hours[i] end
          hours[at], hours[at + 1], hours[at + 2], hours[at + 3], hours[at + 4] =
            hour, 0, 0, 0, 0
          n_hours = n_hours + 1
        end
        hours[at + 1] = checked(key, hours[at + 1] + amount)
        hours[at + 2] = hours[at + 2] + 1
        if ts == hour then
          hours[at + 3] = checked(key, hours[at + 3] + amount)
          hours[at + 4] = hours[at + 4] + 1
        end
      end
    end
    if outcome_parts then
      outcome_parts[#outcome_parts + 1] = outcome
    elseif n_records == 1 then
      outcomes = outcome
    else
      outcomes = outcomes .. outcome
    end
  end
  if added_parts then
    added = table.concat(added_parts)
    outcomes = table.concat(outcome_parts)
  end

  -- Keep what can still matter: events inside the retention (trimmed in bulk), hours
  -- from T_b on.
  local n_events = #added / EVENT_SIZE
  if held_at then n_events = n_events + (#held - held_at + 1) / EVENT_SIZE end
  local trimmed = nil -- the kept events, packed, when trimming
  if oldest and oldest <= clock - retention - slack then
    local kept = {}
    oldest = nil
    local function keep(events, first)
      for at = first, #events, EVENT_SIZE do
        local ts = struct.unpack('<i8', events, at)
        if ts > clock - retention then
          kept[#kept + 1] = string.sub(events, at, at + EVENT_SIZE - 1)
          if not oldest or ts < oldest then oldest = ts end
        end
      end
    end
    if held_at then keep(held, held_at) end
    keep(added, 1)
    trimmed = table.concat(kept)
    n_events = #kept
  end
  local first_hour = 1
  if watermark then
    while first_hour <= 5 * n_hours and hours[first_hour] < watermark do
      first_hour = first_hour + 5
    end
  end
  local kept_hours = n_hours - (first_hour - 1) / 5
  local hour_block = ''
  for at = first_hour, 5 * n_hours, 5 do
    hour_block = hour_block .. struct.pack(HOUR, hours[at], hours[at + 1], hours[at + 2],
      hours[at + 3], hours[at + 4])
  end
  local header = struct.pack(HEADER, 'W3', generation, last_offset, clock or 0,
    clock and 1 or 0, oldest or 0, n_events, kept_hours)
  local state
  if trimmed then
    state = header .. hour_block .. trimmed
  elseif held_at then
    state = header .. hour_block .. string.sub(held, held_at) .. added
  else
    state = header .. hour_block .. added
  end
  local ttl = ttl_window
  if kept_hours > 0 then ttl = ttl_hours end
  return state, ttl, outcomes
end

-- Compute every state first: an error (an unknown encoding, a sum beyond 2^53) fails the
-- call before anything is written.
local latest = {} -- per key: the state its last run left
local latest_ttl = {} -- per key: that state's TTL
local reply = {}
for i = 1, runs do
  local key = KEYS[i]
  local stored = latest[key]
  if not stored then stored = redis.call('GET', key) end
  local state, ttl, outcomes = apply_run(key, stored, ARGV[5 + i])
  latest[key], latest_ttl[key] = state, ttl
  reply[2 * i - 1], reply[2 * i] = state, outcomes
end
-- Then write each key once, with the state its last run left.
for i = 1, runs do
  local key = KEYS[i]
  local state = latest[key]
  if state then
    redis.call('SET', key, state, 'PX', latest_ttl[key])
    latest[key] = nil
  end
end
return reply
