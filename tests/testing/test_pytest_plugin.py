"""The kit's pytest plugin: its fixtures and marker, in a pytest run of
their own (loaded from the installed entry point, as for a plugin author)."""

from __future__ import annotations

import pytest

from streamcp.services import KafkaService, RedisService, running_pids


def test_the_plugin_is_loaded_from_the_pytest11_entry_point(
    pytestconfig: pytest.Config,
) -> None:
    """pytest registers the plugin under the name 'streamcp' on its own."""
    plugin = pytestconfig.pluginmanager.get_plugin("streamcp")

    assert plugin is not None
    assert plugin.__name__ == "streamcp.testing.pytest_plugin"


def test_the_harness_fixture_builds_harnesses_and_closes_them_after_the_test(
    pytester: pytest.Pytester,
) -> None:
    """streamcp_harness(handler, **settings) gives a working Harness, and a
    harness left open is closed (handler close() called) at teardown."""
    pytester.makepyfile(
        """
        from streamcp.testing import Harness

        class Counter:
            closed = 0

            def handle(self, event):
                pass

            def close(self):
                Counter.closed += 1

        def test_uses_the_fixture(streamcp_harness):
            harness = streamcp_harness(Counter(), partitions=2,
                                       commit_every_events=1)
            assert isinstance(harness, Harness)
            harness.feed(harness.events_from_bytes([b"a", b"b"]))
            assert len(harness.checkpoints()) == 2

        def test_runs_after_and_sees_it_closed():
            assert Counter.closed == 1
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")

    result.assert_outcomes(passed=2)


def test_the_conformance_marker_passes_a_correct_handler_and_fails_a_wrong_one(
    pytester: pytest.Pytester,
) -> None:
    """@pytest.mark.streamcp_conformance runs the checks before the body: the
    correct handler's test passes, the wrong one's fails with the failed
    check and its advice, and its body never runs."""
    pytester.makepyfile(
        """
        import pytest
        from tests.testing.samples import (
            EVENTS, CountsRedeliveries, Ledger, WordCount)

        SETTINGS = dict(state=Ledger, snapshot=Ledger.snapshot, replay="skip")

        @pytest.mark.streamcp_conformance(WordCount, EVENTS, **SETTINGS)
        def test_correct():
            pass

        @pytest.mark.streamcp_conformance(CountsRedeliveries, EVENTS, **SETTINGS)
        def test_wrong():
            raise AssertionError("the body ran")
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")

    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*ConformanceError*at_least_once*", "*Make the handler idempotent*"]
    )
    result.stdout.no_fnmatch_line("*the body ran*")


def test_loading_the_plugin_starts_no_service_unless_a_fixture_asks(
    pytester: pytest.Pytester,
) -> None:
    """A session with the plugin loaded and no service fixture used starts
    no broker or Redis process."""
    pytester.makepyfile("def test_nothing():\n    pass\n")
    before = running_pids()

    result = pytester.runpytest("-p", "no:cacheprovider")

    result.assert_outcomes(passed=1)
    assert running_pids() == before


def test_the_service_fixtures_give_the_broker_and_redis_named_in_the_environment(
    pytester: pytest.Pytester,
    monkeypatch: pytest.MonkeyPatch,
    kafka: KafkaService,
    redis_service: RedisService,
) -> None:
    """With STREAMCP_TEST_KAFKA_BOOTSTRAP and STREAMCP_TEST_REDIS_URL set,
    streamcp_kafka and streamcp_redis are those services (kind 'external'),
    and they answer."""
    monkeypatch.setenv("STREAMCP_TEST_KAFKA_BOOTSTRAP", kafka.bootstrap_servers)
    monkeypatch.setenv("STREAMCP_TEST_REDIS_URL", redis_service.url)
    pytester.makepyfile(
        f"""
        import uuid

        def test_services(streamcp_kafka, streamcp_redis):
            assert streamcp_kafka.kind == "external"
            assert streamcp_kafka.bootstrap_servers == {kafka.bootstrap_servers!r}
            assert streamcp_redis.url == {redis_service.url!r}
            assert streamcp_redis.client().ping()
            streamcp_kafka.create_topic("t-" + uuid.uuid4().hex[:12], 1)
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")

    result.assert_outcomes(passed=1)
