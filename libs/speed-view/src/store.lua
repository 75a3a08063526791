#!lua flags=allow-cross-slot-keys
-- Writes customer states the speed layer applied in memory, each only if its key still
-- holds the state it was applied to (see `apply.rs`): a compare-and-set on the header,
-- which says the state's generation, last offset, clock and counts. The encoding is
-- documented in the crate's `state` module.
--
-- KEYS[i]        customer i's key; a key may come more than once, in the order its
--                states were applied (each expects the one before)
-- ARGV[3i - 2]   the header (the first 43 bytes) the key must hold, '' for no key
-- ARGV[3i - 1]   the new state
-- ARGV[3i]       its TTL in ms
--
-- Returns one byte per key: '1' written, '0' not (the key holds something else).
--
-- Nothing is decoded or copied here beyond what Redis must: the header is read with
-- GETRANGE, and the new state goes from the call's arguments to SET.
if #ARGV ~= 3 * #KEYS then
  return redis.error_reply('store: ' .. #KEYS .. ' keys but ' .. #ARGV .. ' arguments')
end
local written = {}
for i = 1, #KEYS do
  local at = 3 * i
  if redis.call('GETRANGE', KEYS[i], 0, 42) == ARGV[at - 2] then
    redis.call('SET', KEYS[i], ARGV[at - 1], 'PX', ARGV[at])
    written[i] = '1'
  else
    written[i] = '0'
  end
end
return table.concat(written)
