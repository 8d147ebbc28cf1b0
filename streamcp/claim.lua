-- Claim partitions of one namespace: bump each epoch, record the owner.
-- KEYS[1] history stream, KEYS[2] partition index set,
-- KEYS[2 + i] checkpoint hash of the i-th partition
-- ARGV: owner, history_max, claimed_at, then "<topic>:<partition>" each
-- Answers each partition's hash after the claim (flat field/value list).
local owner, history_max, at = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local rows = {}
for i = 3, #KEYS do
  local key, member_name = KEYS[i], ARGV[i + 1]
  local epoch = redis.call('HINCRBY', key, 'epoch', 1)
  redis.call('HSET', key, 'owner', owner, 'claimed_at', at, 'operator_change', '0')
  redis.call('SADD', KEYS[2], member_name)
  local sep = string.find(member_name, ':[^:]*$')
  local offset = redis.call('HGET', key, 'offset')
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', history_max, '*',
             'kind', 'claim', 'topic', string.sub(member_name, 1, sep - 1),
             'partition', string.sub(member_name, sep + 1),
             'offset', offset or '', 'previous', offset or '',
             'epoch', epoch, 'owner', owner, 'at', at)
  rows[#rows + 1] = redis.call('HGETALL', key)
end
return rows
