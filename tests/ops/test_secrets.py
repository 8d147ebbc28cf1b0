"""Secrets never appear: not in logs at debug, --help, or error messages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable

from click.testing import CliRunner

from streamcp.cli import main
from streamcp.services import RedisService
from tests.ops.conftest import Setup
from tests.recorder import read_handled
from tests.service.harness import REPO, ServiceProcess, produce, wait_for, write_config

REDIS_PASSWORD = "redis-Secret-8f3kQ"
WRONG_PASSWORD = "wrong-Secret-1x7Zp"
SASL_PASSWORD = "sasl-Secret-4hN2w"
SECRETS = (REDIS_PASSWORD, WRONG_PASSWORD, SASL_PASSWORD)


def _assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} appears in {where}"


def _with_password(url: str, password: str) -> str:
    return url.replace(f":{REDIS_PASSWORD}@", f":{password}@")


def _raw(setup: Setup, redis_url: str) -> dict[str, object]:
    raw = setup.raw(
        handler={"options": {"path": str(setup.tmp / "handled.txt")}},
        log={"level": "debug", "format": "json"},
    )
    raw["redis"] = {"url": redis_url, "key_prefix": setup.prefix}
    # The local broker has no SASL: the password stays configured but unused
    # (security.protocol stays plaintext, which librdkafka accepts).
    raw["kafka"]["properties"] = {"sasl.password": SASL_PASSWORD}  # type: ignore[index]
    return raw


def _cli(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamcp.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        timeout=120,
        check=False,
    )


def test_run_at_debug_with_redis_and_sasl_passwords_never_prints_them(
    setup_factory: Callable[..., Setup],
    redis_factory: Callable[..., RedisService],
) -> None:
    """A real ``streamcp run`` at debug level against a Redis with
    requirepass and a configured sasl.password handles events, and neither
    password appears anywhere in its output."""
    private = redis_factory(password=REDIS_PASSWORD)
    assert REDIS_PASSWORD in private.url
    setup = setup_factory(redis_url=private.url)
    produce(setup.kafka.bootstrap_servers, setup.topic, 3, 5)
    config = write_config(setup.tmp / "c.toml", _raw(setup, private.url))
    log = setup.tmp / "run.log"
    proc = ServiceProcess(config, log)
    try:
        wait_for(
            lambda: len(read_handled(setup.tmp / "handled.txt")) == 15,
            what="15 events handled",
        )
        wait_for(lambda: proc.saw("checkpoint.committed"), what="a commit")
        proc.signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
    text = log.read_text()
    assert '"level": "debug"' in text
    _assert_no_secret(text, "the service's output")


def test_wrong_redis_password_exits_1_naming_the_refusal_not_the_password(
    setup_factory: Callable[..., Setup],
    redis_factory: Callable[..., RedisService],
) -> None:
    """With a wrong Redis password ``streamcp run`` exits 1 at once saying
    Redis refused the credentials, with the URL redacted; ``checkpoints
    show`` and ``lag`` fail with status 1 the same way. No password shows."""
    private = redis_factory(password=REDIS_PASSWORD)
    setup = setup_factory(redis_url=private.url)
    wrong = _with_password(private.url, WRONG_PASSWORD)
    config = write_config(setup.tmp / "c.toml", _raw(setup, wrong))

    ran = _cli("run", "--config", str(config))
    assert ran.returncode == 1, ran.stderr
    assert "refused the credentials" in ran.stderr
    assert ":***@" in ran.stderr
    _assert_no_secret(ran.stdout + ran.stderr, "run's output")

    for command in (["checkpoints", "show"], ["lag"]):
        result = _cli(*command, "--config", str(config))
        assert result.returncode == 1, result.stderr
        assert ":***@" in result.stderr
        _assert_no_secret(result.stdout + result.stderr, f"{command}'s output")


def test_help_and_configuration_errors_never_print_secrets() -> None:
    """Every command's --help, with secrets in the environment, and a
    configuration error about a URL holding a password, show no secret."""
    env = {
        "STREAMCP_REDIS__URL": f"redis://:{REDIS_PASSWORD}@127.0.0.1:1/0",
        "STREAMCP_KAFKA__PROPERTIES__SASL.PASSWORD": SASL_PASSWORD,
    }
    runner = CliRunner()
    commands = [[], ["run"], ["lag"], ["checkpoints"]] + [
        ["checkpoints", name]
        for name in ("show", "set", "reset", "history", "export", "import", "delete")
    ]
    for command in commands:
        result = runner.invoke(main, [*command, "--help"], env=env)
        assert result.exit_code == 0, result.output
        _assert_no_secret(result.output, f"{command} --help")

    bad = runner.invoke(
        main,
        [
            "checkpoints",
            "show",
            "--redis-url",
            f"http://:{REDIS_PASSWORD}@127.0.0.1:1/0",
        ],
    )
    assert bad.exit_code == 2
    assert "redis.url" in bad.output
    _assert_no_secret(bad.output, "the configuration error")
