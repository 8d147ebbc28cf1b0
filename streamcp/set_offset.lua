-- An operator sets one partition's checkpoint (it may go backwards).
-- Bumps the epoch and marks the change, so that the recorded owner's next
-- commit is refused and the owner re-reads the checkpoint and seeks there.
-- KEYS[1] history stream, KEYS[2] partition index set, KEYS[3] checkpoint hash
-- ARGV: "<topic>:<partition>", offset, by, at, history_max
local member_name, offset, by, at = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local previous = redis.call('HGET', KEYS[3], 'offset')
local epoch = redis.call('HINCRBY', KEYS[3], 'epoch', 1)
redis.call('HSET', KEYS[3], 'offset', offset, 'committed_at', at,
           'committed_by_host', by, 'committed_by_pid', 0,
           'committed_by_member', '', 'events', 0, 'operator_change', '1')
redis.call('SADD', KEYS[2], member_name)
local sep = string.find(member_name, ':[^:]*$')
redis.call('XADD', KEYS[1], 'MAXLEN', '~', tonumber(ARGV[5]), '*',
           'kind', 'operator', 'topic', string.sub(member_name, 1, sep - 1),
           'partition', string.sub(member_name, sep + 1),
           'offset', offset, 'previous', previous or '',
           'epoch', epoch, 'owner', by, 'at', at)
return redis.call('HGETALL', KEYS[3])
