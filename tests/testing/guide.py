"""The fenced code blocks of the handler guide, for the tests that run them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]
GUIDE = CHECKOUT / "docs" / "handler-guide.md"

_FENCE = re.compile(
    r"^```(?P<lang>[\w-]*)\n(?P<body>.*?)^```\n", re.DOTALL | re.MULTILINE
)
_TEST_FILE = re.compile(r"^# (test_\w+\.py)\n")

# What each example runs with before it: logs to stderr, so that only what
# the example prints is compared with its output block.
PREAMBLE = (
    "import runpy, sys\n"
    "from streamcp.logs import configure_logging\n"
    "configure_logging('error', 'json')\n"
    "runpy.run_path(sys.argv[1], run_name='__main__')\n"
)


@dataclass(frozen=True)
class Block:
    """One fenced block: its language, text, line, and the output shown after."""

    lang: str
    body: str
    line: int
    output: str | None = None

    @property
    def test_file(self) -> str | None:
        """The file name a pytest example asks for (``# test_x.py`` first)."""
        found = _TEST_FILE.match(self.body)
        return found.group(1) if found else None

    @property
    def id(self) -> str:
        return f"{self.lang}-line-{self.line}"


def blocks(path: Path = GUIDE) -> list[Block]:
    """Every fenced block but output blocks, which go to the block before."""
    text = path.read_text(encoding="utf-8")
    found: list[Block] = []
    previous_end = -1
    for match in _FENCE.finditer(text):
        lang, body = match.group("lang"), match.group("body")
        line = text.count("\n", 0, match.start()) + 1
        between = text[previous_end : match.start()] if previous_end >= 0 else "x"
        if lang == "output" and found and not between.strip():
            last = found.pop()
            found.append(Block(last.lang, last.body, last.line, body))
        else:
            found.append(Block(lang, body, line))
        previous_end = match.end()
    return found


def python_blocks() -> list[Block]:
    return [block for block in blocks() if block.lang == "python"]
