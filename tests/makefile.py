"""The project's Makefile as the tests read it: a target's recipe lines."""

from __future__ import annotations

import re
from pathlib import Path

MAKEFILE = Path(__file__).parents[1] / "Makefile"


def recipe(target: str) -> list[str]:
    """The recipe lines of `target`, stripped, as `make` would run them."""
    body = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", MAKEFILE.read_text(encoding="utf-8"), re.M)
    assert body, f"the Makefile has no {target} target"
    return [line.strip() for line in body.group(1).splitlines()]
