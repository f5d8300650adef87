#!lua flags=allow-oom
-- Deletes a document's keys and tells the nodes that have it open. Its
-- metadata record stays behind for a while as the deletion's mark, so
-- that a node that missed the word (its subscription was down) learns
-- from the mark that this incarnation was deleted, rather than lost. It
-- only frees memory, so it may run when Redis is over maxmemory.
--
-- KEYS[1]      weft:{doc}:meta, the metadata record
-- KEYS[2..n-1] the document's other keys
-- KEYS[n]      weft:{doc}:deleted, the mark
-- ARGV[1]      how long the mark lasts, in milliseconds
-- ARGV[2]      the document's events channel (sharded: in its slot)
-- ARGV[3]      the message saying it was deleted
--
-- Returns how many of the document's keys were removed.
local n = #KEYS
local meta = redis.call('GET', KEYS[1])
if meta then redis.call('SET', KEYS[n], meta, 'PX', ARGV[1]) end
local removed = redis.call('DEL', unpack(KEYS, 1, n - 1))
redis.call('SPUBLISH', ARGV[2], ARGV[3])
return removed
