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
-- KEYS[2]  weft:docs, the set of stored documents' names
-- ARGV[1]  the caller's fresh metadata record (MessagePack)
-- ARGV[2]  how long provisional metadata lasts, in milliseconds
-- ARGV[3]  the document's name
--
-- Returns {the metadata record, 1 if the name is in KEYS[2] else 0}.
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -2 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
elseif ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return {redis.call('GET', KEYS[1]), redis.call('SISMEMBER', KEYS[2], ARGV[3])}
