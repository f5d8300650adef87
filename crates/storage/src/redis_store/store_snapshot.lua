#!lua
-- Stores a snapshot and its index entry. It becomes the head (the snapshot
-- loads start from) only if it is at least as new as the head: a node that
-- lags behind must not move it back. The log is then trimmed to a tail of
-- changes behind the head, and never past the changes the history window
-- still keeps.
--
-- KEYS[1]  weft:{doc}:snapshots, id -> snapshot record
-- KEYS[2]  weft:{doc}:head, the head's id
-- KEYS[3]  weft:{doc}:head-seq, the head's sequence number
-- KEYS[4]  weft:{doc}:log, the stream of changes (entry id 0-<seq>)
-- KEYS[5]  weft:{doc}:snapshot-index, id -> index record
-- ARGV[1]  the snapshot's id
-- ARGV[2]  its record
-- ARGV[3]  its sequence number
-- ARGV[4]  how many changes to keep behind the head
-- ARGV[5]  its index record
-- ARGV[6]  the newest sequence number old enough to leave the history
--          window (the caller judged it from the snapshots' times)
--
-- Returns 1.
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[5], ARGV[1], ARGV[5])
local head = tonumber(redis.call('GET', KEYS[3]) or '0')
local seq = tonumber(ARGV[3])
if seq >= head then
  redis.call('SET', KEYS[2], ARGV[1])
  redis.call('SET', KEYS[3], seq)
  head = seq
end
local from = math.min(head - tonumber(ARGV[4]), tonumber(ARGV[6])) + 1
if from > 1 then redis.call('XTRIM', KEYS[4], 'MINID', '0-' .. from) end
return 1
