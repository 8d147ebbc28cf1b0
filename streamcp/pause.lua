-- Pause a partition at a failed event (from its current owner), or lift it.
-- KEYS[1] history stream, KEYS[2] checkpoint hash
-- ARGV: "pause"|"unpause", "<topic>:<partition>", owner (or who lifts it),
--       epoch, offset, reason, at, history_max
-- Answers 1 when it changed something, 0 otherwise.
local action, member_name, who = ARGV[1], ARGV[2], ARGV[3]
local epoch, offset, reason, at = ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local stored = redis.call('HMGET', KEYS[2], 'epoch', 'owner', 'offset', 'paused')
if action == 'pause' then
  if stored[1] ~= epoch or stored[2] ~= who then
    return 0
  end
  redis.call('HSET', KEYS[2], 'paused', '1', 'paused_offset', offset,
             'paused_reason', reason, 'paused_at', at)
else
  if stored[4] ~= '1' then
    return 0
  end
  redis.call('HSET', KEYS[2], 'paused', '0')
  redis.call('HDEL', KEYS[2], 'paused_offset', 'paused_reason', 'paused_at')
  epoch = stored[1] or '0'
  offset = stored[3] or ''
end
local sep = string.find(member_name, ':[^:]*$')
redis.call('XADD', KEYS[1], 'MAXLEN', '~', tonumber(ARGV[8]), '*',
           'kind', action, 'topic', string.sub(member_name, 1, sep - 1),
           'partition', string.sub(member_name, sep + 1),
           'offset', offset, 'previous', stored[3] or '',
           'epoch', epoch, 'owner', who, 'at', at)
return 1
