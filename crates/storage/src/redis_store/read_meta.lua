#!lua flags=no-writes
-- Reads what load.lua reads, in one step and writing nothing, so that a
-- Redis over maxmemory (which refuses load.lua) still answers it.
--
-- KEYS[1]  weft:{doc}:meta, the metadata record
-- KEYS[2]  weft:{doc}:seq, the newest sequence number
--
-- Returns {the metadata record, 1 if the document is stored else 0, the
-- newest sequence number}, as load.lua does.
local stored = 0
if redis.call('PTTL', KEYS[1]) == -1 or redis.call('EXISTS', KEYS[2]) == 1 then stored = 1 end
return {redis.call('GET', KEYS[1]), stored, redis.call('GET', KEYS[2])}
