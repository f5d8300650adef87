#!lua flags=no-writes
-- Reads what load.lua reads, in one step and writing nothing, so that a
-- Redis over maxmemory (which refuses load.lua) still answers it.
--
-- KEYS[1]  weft:{doc}:meta, the metadata record
-- KEYS[2]  weft:docs, the set of stored documents' names
-- KEYS[3]  weft:{doc}:seq, the newest sequence number
-- ARGV[1]  the document's name
--
-- Returns {the metadata record, 1 if the document is stored else 0, the
-- newest sequence number}, as load.lua does.
local listed = redis.call('SISMEMBER', KEYS[2], ARGV[1])
if redis.call('PTTL', KEYS[1]) == -1 then listed = 1 end
return {redis.call('GET', KEYS[1]), listed, redis.call('GET', KEYS[3])}
