"""The repository's YAML passes yamllint with the configuration it carries."""

from __future__ import annotations

import subprocess
import sys

from tests.deploy.manifests import ROOT


def test_yaml_files_pass_yamllint() -> None:
    """``yamllint -c .yamllint.yaml`` over the Compose file, the deploy tree
    and the configuration itself reports nothing, warnings included."""
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "yamllint",
            "--strict",
            "-f",
            "parsable",
            "-c",
            str(ROOT / ".yamllint.yaml"),
            str(ROOT / "docker-compose.yml"),
            str(ROOT / "deploy"),
            str(ROOT / ".yamllint.yaml"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        cwd=ROOT,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
