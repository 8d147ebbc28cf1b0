"""``streamcp new-handler``: a package that installs, is found, and passes
its own tests."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from streamcp.cli import main

CHECKOUT = Path(__file__).resolve().parents[2]


def new_handler(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["new-handler", *args])
    return result.exit_code, result.output


def test_new_handler_writes_an_installable_package_with_an_entry_point(
    tmp_path: Path,
) -> None:
    """The package has a pyproject registering the handler class under
    streamcp.handlers, a typed Options dataclass, py.typed and tests."""
    target = tmp_path / "order-totals"
    status, output = new_handler("order-totals", "--directory", str(target))

    assert status == 0, output
    assert "order_totals.handler:OrderTotals" in output
    project = tomllib.loads((target / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["streamcp.handlers"] == {
        "order-totals": "order_totals.handler:OrderTotals"
    }
    assert project["project"]["dependencies"] == ["streamcp>=0.1.0"]
    handler = (target / "src/order_totals/handler.py").read_text()
    assert "class Options:" in handler
    assert "database: str" in handler
    assert (target / "src/order_totals/py.typed").exists()
    assert "streamcp_harness" in (target / "tests/test_handler.py").read_text()


def test_new_handler_writes_into_a_directory_named_after_it_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --directory the package goes to ./NAME."""
    monkeypatch.chdir(tmp_path)
    status, output = new_handler("clicks")

    assert status == 0, output
    assert (tmp_path / "clicks/src/clicks/handler.py").exists()


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("Order Totals", id="space-and-capitals"),
        pytest.param("9lives", id="starts-with-a-digit"),
        pytest.param("class", id="python-keyword"),
        pytest.param("a--b", id="empty-word"),
    ],
)
def test_new_handler_refuses_a_bad_name_with_status_2(
    name: str, tmp_path: Path
) -> None:
    """A name that cannot be an entry point and a package is a usage error
    (exit status 2) and nothing is written."""
    status, output = new_handler(name, "--directory", str(tmp_path / "out"))

    assert status == 2
    assert repr(name) in output
    assert not (tmp_path / "out").exists()


def test_new_handler_never_overwrites_a_directory_with_files(tmp_path: Path) -> None:
    """A non-empty target directory is a usage error; its files stay as
    they were."""
    (tmp_path / "keep.txt").write_text("mine")
    status, output = new_handler("clicks", "--directory", str(tmp_path))

    assert status == 2
    assert "not an empty directory" in output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def _run(
    argv: list[str], cwd: Path, timeout_s: float
) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    }
    return subprocess.run(
        argv,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


@pytest.mark.timeout(1200)
def test_a_generated_package_in_a_fresh_venv_is_listed_and_passes_its_tests(
    tmp_path: Path,
) -> None:
    """In a new virtual environment with streamcp installed from this
    checkout, the generated package installs, `streamcp handlers list`
    shows it with its source and options, and its own tests pass (through
    the kit's pytest plugin, loaded from the installed streamcp)."""
    target = tmp_path / "order-totals"
    status, output = new_handler("order-totals", "--directory", str(target))
    assert status == 0, output
    venv = tmp_path / "venv"
    bin_dir = venv / "bin"
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", str(CHECKOUT)],
        [str(bin_dir / "python"), "-m", "pip", "install", "--quiet", f"{target}[test]"],
    ]
    for argv in steps:
        done = _run(argv, tmp_path, timeout_s=600)
        assert done.returncode == 0, f"{argv}:\n{done.stdout}\n{done.stderr}"

    listed = _run([str(bin_dir / "streamcp"), "handlers", "list"], tmp_path, 120)
    tests = _run(
        [str(bin_dir / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        target,
        300,
    )

    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    start = lines.index(
        "order-totals  (entry point of order-totals 0.1.0 "
        "(order_totals.handler:OrderTotals))"
    )
    assert lines[start + 1 : start + 3] == [
        "    option database: str = required",
        "    option field: str = 'type'",
    ]
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "4 passed" in tests.stdout
