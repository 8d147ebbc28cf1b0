"""The Dockerfile, read statically: a small multi-stage image that runs as a
non-root user and bakes in no secret."""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
from dataclasses import dataclass, field

from tests.deploy.manifests import ROOT, tool

DOCKERFILE = ROOT / "Dockerfile"
SECRET_WORDS = re.compile(
    r"pass(word)?|secret|token|credential|api_?key|private", re.IGNORECASE
)
BUILD_TOOLS = (
    "gcc",
    "g++",
    "build-essential",
    "make",
    "cc ",
    "pip install",
    "apt-get install",
    "python3-dev",
    "librdkafka-dev",
)


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def instructions(text: str) -> list[tuple[str, str]]:
    """``(KEYWORD, arguments)`` of each instruction, continuations joined and
    comments dropped."""
    logical: list[str] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in logical
    ]


def stages(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the build stages, in order."""
    args: dict[str, str] = {}
    found: list[Stage] = []
    for keyword, rest in instructions(text):
        if keyword == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m[1], m[0]), words[0])
            name = words[2] if len(words) > 2 and words[1].upper() == "AS" else ""
            found.append(Stage(base, name))
        elif not found and keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip()
        else:
            found[-1].instructions.append((keyword, rest))
    return args, found


ARGS, STAGES = stages(DOCKERFILE.read_text("utf-8"))
FINAL = STAGES[-1]


def test_image_is_built_in_stages_on_python_311_slim() -> None:
    """Two stages or more, every one on python:3.11-slim; the final stage
    copies the built environment from an earlier one."""
    assert len(STAGES) >= 2
    assert all(stage.base.startswith("python:3.11-slim") for stage in STAGES)
    copies = FINAL.all("COPY")
    earlier = {stage.name for stage in STAGES[:-1]}
    assert any(re.match(rf"--from=({'|'.join(earlier)})\s", c) for c in copies)


def test_final_stage_runs_as_a_non_root_user() -> None:
    """The last USER of the final stage is a numeric id other than 0, so
    Kubernetes' runAsNonRoot can check it."""
    users = FINAL.all("USER")
    assert users, "the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user.isdigit()
    assert int(user) != 0


def test_final_stage_installs_no_build_tools() -> None:
    """The final stage runs no package or pip install and names no compiler:
    it only copies the environment built before."""
    for command in FINAL.all("RUN"):
        assert not [t for t in BUILD_TOOLS if t in command], command


def test_no_secret_is_built_into_the_image() -> None:
    """No ENV or ARG carries a password, token or secret, and no value holds
    URL credentials; no secret mount or credentials file is copied in."""
    for stage in STAGES:
        for keyword in ("ENV", "ARG"):
            for args in stage.all(keyword):
                for name, value in re.findall(r"(\w+)=(\S*)", args) or [(args, "")]:
                    assert not SECRET_WORDS.search(name), f"{keyword} {name}"
                    assert not re.search(r"//[^/@\s]*:[^/@\s]*@", value), value
        for args in stage.all("COPY") + stage.all("ADD"):
            assert not re.search(r"\.env\b|id_rsa|\.pem|\.netrc|credentials", args)
        for args in stage.all("RUN"):
            assert "--mount=type=secret" not in args
    assert not [name for name in ARGS if SECRET_WORDS.search(name)]


def test_entrypoint_is_streamcp_running_the_mounted_config() -> None:
    """ENTRYPOINT ["streamcp"] and CMD ["run", "--config",
    "/etc/streamcp/config.toml"], in exec form."""
    assert [json.loads(e) for e in FINAL.all("ENTRYPOINT")] == [["streamcp"]]
    assert [json.loads(c) for c in FINAL.all("CMD")] == [
        ["run", "--config", "/etc/streamcp/config.toml"]
    ]
    assert "9400" in FINAL.all("EXPOSE")


def _ignored(path: str, patterns: list[str]) -> bool:
    # .dockerignore semantics for the patterns used here: the last match
    # wins, "!" re-includes, a directory pattern covers what is under it.
    ignored = False
    for line in patterns:
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        for candidate in [path, *(path.rsplit("/", n)[0] for n in range(1, 4))]:
            if fnmatch.fnmatch(candidate, pattern) or fnmatch.fnmatch(
                candidate, pattern.replace("**/", "")
            ):
                ignored = not negate
                break
    return ignored


def test_dockerignore_sends_only_the_package_and_its_metadata() -> None:
    """The build context holds what the Dockerfile copies and leaves out the
    virtualenv, the git directory, local state and environment files."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text("utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for copied in (
        "pyproject.toml",
        "README.md",
        "streamcp/cli.py",
        "streamcp/examples/data/wikimedia-recentchange.ndjson",
    ):
        assert not _ignored(copied, patterns), copied
    for private in (
        ".venv/bin/python",
        ".git/config",
        ".env",
        ".streamcp/demo",
        "tests/conftest.py",
        "streamcp/__pycache__/cli.cpython-311.pyc",
    ):
        assert _ignored(private, patterns), private


def test_hadolint_finds_nothing_to_report() -> None:
    """hadolint, the Dockerfile linter, passes the Dockerfile with its
    default rules."""
    completed = subprocess.run(
        [tool("hadolint"), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
