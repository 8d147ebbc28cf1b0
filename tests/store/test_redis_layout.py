"""The documented Redis layout v1, as an operator with redis-cli sees it."""

from __future__ import annotations

import redis

from streamcp.events import TopicPartition
from streamcp.redis_store import RedisCheckpointStore
from streamcp.store import CommitRequest, Owner


def test_layout_keys_fields_and_no_ttl(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    """Keys carry the version and the group's hash tag; fields are plain text;
    nothing expires; one commit is one script call."""
    store = RedisCheckpointStore(redis_client, key_prefix=key_prefix)
    me = Owner("inst-1", "host1", 4242, "member-1")
    tp = TopicPartition("wiki.edits", 2)
    epoch = store.claim("my-group", [tp], me)[tp].epoch
    store.commit("my-group", me, [CommitRequest(tp, 1, epoch)])  # loads the script
    before = (
        redis_client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
    )
    store.commit("my-group", me, [CommitRequest(tp, 17, epoch, events=17)])
    after = redis_client.info("commandstats")["cmdstat_evalsha"]["calls"]
    assert after - before == 1

    key = f"{key_prefix}:v1:{{my-group}}:cp:wiki.edits:2"
    fields = {k.decode(): v.decode() for k, v in redis_client.hgetall(key).items()}
    assert fields["offset"] == "17"
    assert fields["epoch"] == str(epoch)
    assert fields["owner"] == "inst-1"
    assert fields["committed_by_host"] == "host1"
    assert fields["committed_by_pid"] == "4242"
    assert fields["committed_by_member"] == "member-1"
    assert fields["events"] == "17"
    assert fields["committed_at"].endswith("+00:00")
    members = redis_client.smembers(f"{key_prefix}:v1:{{my-group}}:partitions")
    assert members == {b"wiki.edits:2"}
    for name in redis_client.scan_iter(match=f"{key_prefix}:*"):
        assert redis_client.ttl(name) == -1


def test_one_script_call_commits_256_partitions(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    """Committing 256 partitions costs one round trip (one EVALSHA)."""
    store = RedisCheckpointStore(redis_client, key_prefix=key_prefix)
    me = Owner("inst-1", "h", 1)
    parts = [TopicPartition("big", p) for p in range(256)]
    claims = store.claim("g256", parts, me)
    store.commit("g256", me, [CommitRequest(parts[0], 1, claims[parts[0]].epoch)])
    redis_client.config_resetstat()
    result = store.commit(
        "g256", me, [CommitRequest(tp, 5, claims[tp].epoch) for tp in parts]
    )
    assert len(result.accepted) == 256
    stats = redis_client.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 1
    assert stats["cmdstat_hset"]["calls"] == 256
