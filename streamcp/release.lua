-- Release partitions this owner still holds at the given epochs.
-- KEYS[1] history stream, KEYS[1 + i] checkpoint hash of the i-th partition
-- ARGV: owner, history_max, released_at, then per partition: "<topic>:<partition>", epoch
local owner, history_max, at = ARGV[1], tonumber(ARGV[2]), ARGV[3]
for i = 2, #KEYS do
  local base = 4 + (i - 2) * 2
  local member_name, epoch = ARGV[base], ARGV[base + 1]
  local stored = redis.call('HMGET', KEYS[i], 'epoch', 'owner', 'offset')
  if stored[1] == epoch and stored[2] == owner then
    redis.call('HSET', KEYS[i], 'owner', '')
    local sep = string.find(member_name, ':[^:]*$')
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', history_max, '*',
               'kind', 'release', 'topic', string.sub(member_name, 1, sep - 1),
               'partition', string.sub(member_name, sep + 1),
               'offset', stored[3] or '', 'previous', stored[3] or '',
               'epoch', epoch, 'owner', owner, 'at', at)
  end
end
return 1
