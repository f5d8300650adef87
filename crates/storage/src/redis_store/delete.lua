#!lua flags=allow-oom
-- Deletes a document: its keys, its name from the set of documents, and
-- tells the nodes that have it open. Its metadata record stays behind for
-- a while as the deletion's mark, so that a node that missed the word
-- (its subscription was down) learns from the mark that this incarnation
-- was deleted, rather than lost. It only frees memory, so it may run when
-- Redis is over maxmemory.
--
-- KEYS[1]      weft:{doc}:meta, the metadata record
-- KEYS[2..n-2] the document's other keys
-- KEYS[n-1]    weft:{doc}:deleted, the mark
-- KEYS[n]      weft:docs, the set of stored documents' names
-- ARGV[1]      the document's name
-- ARGV[2]      how long the mark lasts, in milliseconds
-- ARGV[3]      the document's events channel
-- ARGV[4]      the message saying it was deleted
--
-- Returns how many of the document's keys were removed.
local n = #KEYS
local meta = redis.call('GET', KEYS[1])
if meta then redis.call('SET', KEYS[n - 1], meta, 'PX', ARGV[2]) end
local removed = redis.call('DEL', unpack(KEYS, 1, n - 2))
redis.call('SREM', KEYS[n], ARGV[1])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return removed
