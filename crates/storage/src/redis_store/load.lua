#!lua
-- Loads a document's metadata. A name never written gets the caller's
-- fresh metadata for a while, unless another node's provisional metadata
-- is there, which is kept and renewed: every node loading the name
-- meanwhile agrees on its incarnation. Stored metadata (no expiry) is left
-- as it is. Declared a writing script (first line): a Redis over maxmemory
-- refuses it (OOM), and `RedisStore::load` then reads the metadata
-- without it, so that every stored document stays readable.
--
-- KEYS[1]  weft:{doc}:meta, the metadata record
-- KEYS[2]  weft:{doc}:seq, the newest sequence number
-- ARGV[1]  the caller's fresh metadata record (MessagePack)
-- ARGV[2]  how long provisional metadata lasts, in milliseconds
--
-- Returns {the metadata record, 1 if the document is stored else 0, the
-- newest sequence number}, read in one step so that they agree. A
-- document is stored if its metadata is permanent or it has a newest
-- sequence number (its first append sets both); a stored document whose
-- metadata is gone (evicted, or deleted by hand) gets none made up:
-- {false, 1, ...}, and the caller refuses it.
local ttl = redis.call('PTTL', KEYS[1])
local stored = 0
if ttl == -1 or redis.call('EXISTS', KEYS[2]) == 1 then stored = 1 end
if ttl == -2 then
  if stored == 0 then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
elseif ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return {redis.call('GET', KEYS[1]), stored, redis.call('GET', KEYS[2])}
