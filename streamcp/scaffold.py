"""``streamcp new-handler``: the package of a new handler plugin.

The package is small and installable: a ``pyproject.toml`` that registers
the handler under the ``streamcp.handlers`` entry point, the handler with a
typed ``Options`` dataclass, and tests that use the handler test kit. It
passes its own tests as written. The templates are package data under
``streamcp/templates/handler``.
"""

from __future__ import annotations

import importlib.util
import keyword
import re
import sys
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from string import Template

# A name that is valid as an entry point, a distribution and (with "_" for
# "-") a Python package: lower case, words joined by "-" or "_".
_NAME = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")

# Output path (with the package's name filled in) -> template file.
_FILES = {
    "pyproject.toml": "pyproject.toml.tmpl",
    "README.md": "README.md.tmpl",
    "src/{package}/__init__.py": "init.py.tmpl",
    "src/{package}/handler.py": "handler.py.tmpl",
    "src/{package}/py.typed": None,
    "tests/test_handler.py": "test_handler.py.tmpl",
}


@dataclass(frozen=True, slots=True)
class HandlerPackage:
    """What :func:`create_handler_package` wrote."""

    name: str
    package: str
    class_name: str
    directory: Path
    files: tuple[Path, ...]


def create_handler_package(name: str, directory: Path | None = None) -> HandlerPackage:
    """Write the package of handler ``name`` into ``directory`` (``./name``).

    Raises ``ValueError`` when ``name`` is not a lower-case name of words
    joined by ``-`` or ``_``, or when ``directory`` exists and is not empty
    (nothing is overwritten). Writes nothing outside ``directory``.
    """
    _check_name(name)
    target = Path(name) if directory is None else directory
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ValueError(f"{str(target)!r} exists and is not an empty directory")
    values = _values(name)
    written = []
    for relative, template in _FILES.items():
        path = target / relative.format(package=values["package"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_render(template, values), encoding="utf-8")
        written.append(path)
    return HandlerPackage(
        name, values["package"], values["class_name"], target, tuple(written)
    )


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise ValueError(
            f"handler name {name!r} must be lower-case letters and digits, "
            f"words joined by '-' or '_', starting with a letter"
        )
    package = name.replace("-", "_")
    if keyword.iskeyword(package):
        raise ValueError(f"handler name {name!r} is a Python keyword")
    if package in sys.stdlib_module_names or importlib.util.find_spec(package):
        raise ValueError(
            f"handler name {name!r} would install a package {package!r} that "
            f"shadows an existing module; choose another name"
        )


def _values(name: str) -> dict[str, str]:
    package = name.replace("-", "_")
    class_name = "".join(part.capitalize() for part in re.split(r"[-_]", name))
    return {
        "name": name,
        "package": package,
        "class_name": class_name,
        "streamcp_version": metadata.version("streamcp"),
    }


def _render(template: str | None, values: dict[str, str]) -> str:
    if template is None:
        return ""
    source = resources.files("streamcp").joinpath("templates", "handler", template)
    return Template(source.read_text(encoding="utf-8")).substitute(values)
