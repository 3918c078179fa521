"""The wheel ships every package: pyproject.toml lists them by hand (the card templates
are mapped in from the top-level cards/ folder), so a new subpackage must be listed."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_python_package_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "cds_service").rglob("__init__.py")}
    assert found <= listed, f"not shipped in the wheel: {sorted(found - listed)}"
