"""Virtual environments for the peer frameworks, one each, made on demand.

The peers pin confluent-kafka versions that clash with streamcp's and with
each other's, so each lives in a venv of its own under the cache directory
(``benchmarks/.venvs/`` by default, gitignored). A venv is made once and
reused while its pins are unchanged; a failed install is reported as the
reason the peer was not run.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path

# Versions that install and run here on Python 3.11. confluent-kafka is
# pinned where the peer leaves it open, so that reruns are comparable.
PEER_PINS: dict[str, tuple[str, ...]] = {
    "quixstreams": ("quixstreams==3.28.1",),
    "arroyo": ("sentry-arroyo==2.48.0",),
    "faust": ("faust-streaming==0.15.3",),
    "plot": ("matplotlib==3.10.8",),
}

INSTALL_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class PeerEnv:
    """A peer's venv: its interpreter, or why there is none."""

    name: str
    python: Path | None
    error: str = ""
    versions: dict[str, str] | None = None


def _stamp(pins: tuple[str, ...]) -> str:
    text = "\n".join((sys.version, *pins))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def ensure(name: str, cache_dir: Path, *, quiet: bool = True) -> PeerEnv:
    """The venv of peer ``name``, made and installed when missing.

    Blocks while pip runs (minutes the first time). Never raises for an
    install failure: the returned :class:`PeerEnv` carries the error.
    """
    pins = PEER_PINS[name]
    root = cache_dir / name
    python = root / "bin" / "python"
    stamp_file = root / ".streamcp-bench-stamp"
    stamp = _stamp(pins)
    if python.exists() and stamp_file.exists() and stamp_file.read_text() == stamp:
        return PeerEnv(name, python, versions=_versions(python, pins))
    try:
        venv.EnvBuilder(with_pip=True, clear=True).create(root)
        command = [
            str(python),
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            *(["--quiet"] if quiet else []),
            *pins,
        ]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return PeerEnv(name, None, error=f"venv not made: {exc}")
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return PeerEnv(name, None, error="pip install failed: " + " | ".join(tail))
    stamp_file.write_text(stamp)
    return PeerEnv(name, python, versions=_versions(python, pins))


def _versions(python: Path, pins: tuple[str, ...]) -> dict[str, str]:
    """Installed versions of the pinned packages and of confluent-kafka."""
    names = [pin.split("==")[0] for pin in pins] + ["confluent-kafka", "aiokafka"]
    script = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [str(python), "-c", script, *names],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        return {}
    return dict(json.loads(done.stdout))
