-- Commit several partitions' checkpoints of one namespace in one call.
-- KEYS[1]      history stream
-- KEYS[1 + i]  checkpoint hash of the i-th partition
-- ARGV: owner, committed_at, host, pid, member, history_max,
--       then per partition: "<topic>:<partition>", offset, epoch, events
-- Answers, per partition: {"ok"} or {reason, stored epoch, owner, offset}.
local owner, at, host, pid, member = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local history_max = tonumber(ARGV[6])
local results = {}
for i = 2, #KEYS do
  local base = 7 + (i - 2) * 4
  local member_name, offset = ARGV[base], tonumber(ARGV[base + 1])
  local epoch, events = ARGV[base + 2], ARGV[base + 3]
  local key = KEYS[i]
  local stored = redis.call('HMGET', key, 'epoch', 'owner', 'offset')
  local stored_epoch, stored_owner, stored_offset = stored[1], stored[2], stored[3]
  local reason = false
  if stored_epoch ~= epoch then
    reason = 'stale_epoch'
  elseif stored_owner ~= owner then
    reason = 'not_owner'
  elseif stored_offset and offset < tonumber(stored_offset) then
    reason = 'backwards'
  end
  if reason then
    results[#results + 1] = {reason, stored_epoch or '0', stored_owner or '',
                             stored_offset or ''}
  else
    results[#results + 1] = {'ok'}
    if not stored_offset or offset ~= tonumber(stored_offset) then
      redis.call('HSET', key, 'offset', offset, 'committed_at', at,
                 'committed_by_host', host, 'committed_by_pid', pid,
                 'committed_by_member', member, 'events', events,
                 'operator_change', '0')
      local sep = string.find(member_name, ':[^:]*$')
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', history_max, '*',
                 'kind', 'commit', 'topic', string.sub(member_name, 1, sep - 1),
                 'partition', string.sub(member_name, sep + 1),
                 'offset', offset, 'previous', stored_offset or '',
                 'epoch', epoch, 'owner', owner, 'at', at)
    end
  end
end
return results
