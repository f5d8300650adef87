#!lua flags=allow-oom
-- Releases a compaction lease, only if this node still holds it (it may
-- have expired and been taken by another). It only ever frees memory, so
-- it may run when Redis is over maxmemory.
--
-- KEYS[1]  weft:{doc}:lease
-- ARGV[1]  this node's id, as it took the lease
--
-- Returns 1 if the lease was released, 0 if another node holds it.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
