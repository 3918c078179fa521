"""The documentation stays true: docs/clinical-reading.md is what the generator gives
from the shipped trial definitions now, every relative link in the README and docs/
points at a file that exists, the README's quick start is what the Makefile and CI
run, and its dependency table covers every package pyproject.toml declares."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from cds_service.cli import main
from cds_service.trials import load_trials
from cds_service.trials.reading import COMMAND, clinical_reading, load_readings, text
from makefile import recipe

ROOT = Path(__file__).resolve().parents[1]
CLINICAL_READING = ROOT / "docs" / "clinical-reading.md"
PAGES = [ROOT / "README.md", ROOT / "bench" / "README.md", ROOT / "cards" / "README.md",
         *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.fixture(scope="module")
def generated() -> str:
    return clinical_reading(load_trials().values(), load_readings())


def test_clinical_reading_is_what_the_definitions_say_now(generated):
    assert CLINICAL_READING.read_text(encoding="utf-8") == generated, (
        f"docs/clinical-reading.md is stale: run `.venv/bin/{COMMAND}` and commit it")


def test_clinical_reading_holds_every_criterion_as_defined(generated):
    for trial in load_trials().values():
        assert f"## {trial.id}: " in generated
        for c in trial.definition.criteria:
            assert f"### `{c.id}`: {text(c.title)}" in generated
            assert f"> {text(c.protocol_text)}" in generated
            assert text(c.interpretation) in generated
            for name in c.rule.codeset_names():  # each set it reads, linked to its provenance
                assert f"[`{name}`](#code-set-{name})" in generated
                assert f'<a id="code-set-{name}"></a>' in generated


def test_a_changed_reading_changes_the_page(generated):
    trial = next(iter(load_trials().values()))
    first = trial.definition.criteria[0]
    edited = first.model_copy(update={"interpretation": "Read otherwise now."})
    definition = trial.definition.model_copy(update={"criteria": [edited, *trial.definition.criteria[1:]]})
    changed = clinical_reading([type(trial)(definition=definition, library=trial.library, units=trial.units)],
                               load_readings())
    assert changed != generated and "Read otherwise now." in changed


def test_plain_text_cannot_turn_into_markdown():
    assert text("10*3/uL or 10*9/L") == r"10\*3/uL or 10\*9/L"  # not emphasis
    assert text("deceased[x] | C50.* <b> << 254837009") == r"deceased\[x\] \| C50.\* \<b> << 254837009"
    assert text("1) Blood tests") == r"\1) Blood tests"  # not a list
    assert text("two\n  lines") == "two lines"


def test_clinical_reading_command_writes_the_page(tmp_path, capsys, generated):
    out = tmp_path / "reading.md"
    assert main(["clinical-reading", "--output", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == generated
    assert main(["clinical-reading"]) == 0
    assert capsys.readouterr().out == generated
    assert main(["clinical-reading", "--output", str(tmp_path / "missing" / "reading.md")]) == 2
    assert "cannot write" in capsys.readouterr().err


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_files_that_exist(page):
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a URL, or a place on the same page
        if not (page.parent / target.split("#")[0]).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)} links to missing files: {broken}"


def _quick_start() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]


def test_quick_start_is_two_commands_the_makefile_and_ci_run():
    assert _quick_start() == ["make run", "make test"]
    assert any("cds-service serve" in line for line in recipe("run"))
    assert any(line.startswith("$(BIN)/pytest") for line in recipe("test"))
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert "make test" in ci, ".ci/run must run the README's test command"


def test_readme_stays_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= 220, f"README.md has {lines} lines: put the detail in docs/"


def test_readme_says_why_for_every_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    names = {re.match(r"[A-Za-z0-9._-]+", r).group().lower() for r in requirements}
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Dependencies", 1)[1].split("\n## ", 1)[0]
    missing = sorted(n for n in names if n not in section.lower())
    assert not missing, f"README.md's Dependencies table does not say why for: {missing}"
