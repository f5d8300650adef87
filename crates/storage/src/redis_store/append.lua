#!lua
-- Appends changes to a document's log, only if the stored incarnation is
-- the caller's and the newest sequence number is still the one the caller
-- last saw; the first append also stores the metadata for good (PERSIST,
-- or SET if the provisional metadata expired). Other nodes following the log hear of the append on the
-- document's events channel. The first line declares it a writing script,
-- so that a Redis over maxmemory refuses it whole (OOM) instead of letting
-- it grow past the limit.
--
-- KEYS[1]  weft:{doc}:log, the stream of changes (entry id 0-<seq>)
-- KEYS[2]  weft:{doc}:seq, the newest sequence number
-- KEYS[3]  weft:{doc}:meta, the metadata record
-- ARGV[1]  the newest sequence number the caller saw
-- ARGV[2]  the caller's metadata record, stored if there is none
-- ARGV[3]  the caller's incarnation as MessagePack, compared with the
--          stored record's: the record is an array (a one-byte header,
--          the schema version as a fixint or 0xcc/0xcd with 1 or 2 bytes,
--          then the incarnation), so records of another schema version
--          compare right
-- ARGV[4]  the document's events channel, weft:{doc}:events (sharded: in
--          the document's slot), or '' to publish nothing (the caller
--          publishes once replicas confirmed)
-- ARGV[5]  the start of the message telling other nodes of the append
--          (the caller's node id and the APPENDED kind); the newest
--          sequence number follows it
-- ARGV[6..] pairs of a change's sequence number and its record
--
-- Returns {1, the new newest sequence number}, {0, the current one}
-- (another node appended first: catch up and retry) or {2, 0} (another
-- incarnation: reload).
local meta = redis.call('GET', KEYS[3])
if meta then
  local at = 3
  local version = string.byte(meta, 2)
  if version == 0xcc then at = 4 elseif version == 0xcd then at = 5 end
  if string.sub(meta, at, at + #ARGV[3] - 1) ~= ARGV[3] then return {2, 0} end
elseif ARGV[1] ~= '0' then
  return {2, 0}
end
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
if current ~= tonumber(ARGV[1]) then return {0, current} end
if meta then redis.call('PERSIST', KEYS[3]) else redis.call('SET', KEYS[3], ARGV[2]) end
local last = current
for i = 6, #ARGV, 2 do
  redis.call('XADD', KEYS[1], '0-' .. ARGV[i], 'r', ARGV[i + 1])
  last = tonumber(ARGV[i])
end
redis.call('SET', KEYS[2], last)
if ARGV[4] ~= '' then redis.call('SPUBLISH', ARGV[4], ARGV[5] .. last) end
return {1, last}
