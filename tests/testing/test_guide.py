"""Every code example in the handler guide runs and shows what the guide
says; the Python ones pass mypy --strict, as does a generated package."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from streamcp.cli import main
from streamcp.scaffold import create_handler_package
from tests.testing.guide import CHECKOUT, PREAMBLE, Block, blocks, python_blocks


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["PYTHONPATH"] = str(CHECKOUT)
    return env


def test_the_guide_has_examples_of_every_kind_and_each_python_one_is_checked() -> None:
    """The guide shows Python, TOML and shell examples; every Python example
    has an output block, asserts, or is a pytest file, so none goes
    unchecked."""
    found = blocks()
    assert {block.lang for block in found} == {"python", "toml", "sh"}
    for block in python_blocks():
        checked = block.output is not None or block.test_file or "assert " in block.body
        assert checked, f"example at line {block.line} checks nothing"


@pytest.mark.parametrize(
    "block", [pytest.param(b, id=b.id) for b in python_blocks() if b.test_file is None]
)
def test_a_python_example_prints_its_output_block(block: Block, tmp_path: Path) -> None:
    """The example runs on its own (no broker, no Redis) and prints exactly
    the output block that follows it."""
    script = tmp_path / "example.py"
    script.write_text(block.body)

    done = subprocess.run(
        [sys.executable, "-c", PREAMBLE, str(script)],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    if block.output is not None:
        assert done.stdout == block.output


@pytest.mark.parametrize(
    "block",
    [pytest.param(b, id=b.id) for b in python_blocks() if b.test_file is not None],
)
def test_a_pytest_example_passes_with_the_kits_plugin(
    block: Block, tmp_path: Path
) -> None:
    """A test-file example passes every test in it, using the fixtures and
    the marker of the installed plugin."""
    name = block.test_file
    assert name is not None
    (tmp_path / name).write_text(block.body)
    tests = len(re.findall(r"^def test_", block.body, re.MULTILINE))

    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", name],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{tests} passed" in done.stdout


@pytest.mark.parametrize(
    "block", [pytest.param(b, id=b.id) for b in blocks() if b.lang == "toml"]
)
def test_a_toml_example_parses(block: Block) -> None:
    """TOML examples are valid TOML."""
    assert tomllib.loads(block.body)


@pytest.mark.parametrize(
    "block", [pytest.param(b, id=b.id) for b in blocks() if b.lang == "sh"]
)
def test_every_streamcp_command_in_a_shell_example_exists(block: Block) -> None:
    """Each `streamcp ...` line names a real command: with --help added it
    exits 0 and shows that command's usage."""
    commands = [
        shlex.split(line)
        for line in block.body.splitlines()
        if line.startswith("streamcp ")
    ]
    assert commands
    for words in commands:
        args = [w for w in words[1:] if not w.startswith("#")]
        result = CliRunner().invoke(main, [*args, "--help"])
        assert result.exit_code == 0, result.output
        assert "Usage:" in result.output


@pytest.mark.timeout(600)
def test_the_guides_examples_and_a_generated_package_pass_mypy_strict(
    tmp_path: Path,
) -> None:
    """mypy --strict finds nothing in the guide's Python examples (each
    written to a file) nor in a package made by new-handler."""
    examples = tmp_path / "examples"
    examples.mkdir()
    for index, block in enumerate(python_blocks()):
        name = block.test_file or f"example_{index}.py"
        (examples / name).write_text(block.body)
    package = create_handler_package("order-totals", tmp_path / "order-totals")
    sources = [
        examples,
        package.directory / "src" / package.package,
        package.directory / "tests",
    ]

    env = _env()
    env["MYPYPATH"] = os.pathsep.join([str(CHECKOUT), str(package.directory / "src")])
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--follow-imports=silent",
            "--cache-dir",
            str(tmp_path / "mypy-cache"),
            "--explicit-package-bases",
            *map(str, sources),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )

    assert done.returncode == 0, done.stdout + done.stderr
    assert "Success: no issues found" in done.stdout
