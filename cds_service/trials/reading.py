"""docs/clinical-reading.md, generated from the trial definitions: for clinicians and
clinical reviewers, every criterion of every shipped trial with its protocol text, how the
service reads it and the code sets it matches records against, then where each code set
comes from. `clinical_reading()` is pure (loaded trials in, Markdown out);
`cds-service clinical-reading` writes it, and tests/test_docs.py fails when the file in
docs/ differs from what it gives now."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, NamedTuple

import yaml

from ..engine import CodeSet, Trial, system_name

READING_FILE = Path(__file__).with_name("reading.yaml")
COMMAND = "cds-service clinical-reading --output docs/clinical-reading.md"


# Markdown that plain text must not turn into: emphasis, code, links, HTML tags, table cells.
_INLINE = re.compile(r"([\\`*_\[\]|~])|<(?=[A-Za-z/!?])")
_BLOCK_START = re.compile(r"^(#|>|[-+*] |\d+[.)])")


class Reading(NamedTuple):
    """One of the engine's readings that hold for every criterion (reading.yaml)."""

    title: str
    text: str  # Markdown


def load_readings(path: Path = READING_FILE) -> list[Reading]:
    with path.open(encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    return [Reading(r["title"], " ".join(r["text"].split())) for r in data["readings"]]


def text(value: str) -> str:
    """Plain text as Markdown that shows it as written, on one line."""
    value = _INLINE.sub(lambda m: "\\" + (m.group(1) or "<"), " ".join(value.split()))
    return "\\" + value if _BLOCK_START.match(value) else value


def _applies_to(criterion) -> str | None:
    if criterion.applies_to is None:
        return None
    return " and ".join(_group(who) for who in criterion.applies_to)


def _group(who) -> str:
    words = {"female": "women", "male": "men"}.get(who.sex or "", "patients")
    if who.min_age is not None and who.max_age is not None:
        return f"{words} aged {who.min_age} to {who.max_age}"
    if who.max_age is not None:
        return f"{words} aged {who.max_age} or younger"
    if who.min_age is not None:
        return f"{words} aged {who.min_age} or older"
    return words


def _criterion(trial: Trial, criterion) -> list[str]:
    rule = criterion.rule
    facts = [criterion.kind, f"rule kind `{rule.type}`"]
    if (who := _applies_to(criterion)) is not None:
        facts.append(f"applies to {who} (else not applicable)")
    lines = [f"### `{criterion.id}`: {text(criterion.title)}", "", _sentence("; ".join(facts)), "",
             f"> {text(criterion.protocol_text)}", "", text(criterion.interpretation), ""]
    if criterion.card_note:
        lines += [f"On the card: {text(criterion.card_note)}", ""]
    orders = [trial.definition.orders[key] for key in dict.fromkeys(rule.orders())]
    if orders:
        lines += ["Orders it may suggest: " + "; ".join(f"{system_name(o.system)} {o.code} {text(o.display)}"
                                                       for o in orders) + ".", ""]
    names = list(dict.fromkeys(rule.codeset_names()))
    if names:
        lines += ["Code sets: " + "; ".join(f"[`{n}`](#{_anchor(n)}) {text(trial.library.sets[n].title)}"
                                           for n in names) + ".", ""]
    return lines


def _sentence(words: str) -> str:
    return words[:1].upper() + words[1:] + "."


def _anchor(name: str) -> str:
    return f"code-set-{name}"


def _trial(trial: Trial) -> list[str]:
    d = trial.definition
    lines = [f"## {d.nct_id}: {text(d.title)}", "",
             f"{text(d.phase)}, {text(d.status)}" + (f"; sponsor {text(d.sponsor)}" if d.sponsor else "")
             + f". Study page: <{d.study_url}>. Definition version {d.definition_version}"
             f" (`cds_service/trials/definitions/{d.nct_id}.yaml`). Protocol text from: {text(d.protocol_source)}.", "",
             "| criterion | kind | rule kind | title |", "|---|---|---|---|"]
    lines += [f"| `{c.id}` | {c.kind} | `{c.rule.type}` | {text(c.title)} |" for c in d.criteria]
    lines.append("")
    for c in d.criteria:
        lines += _criterion(trial, c)
    return lines


def _codeset(codeset: CodeSet, readers: list[str]) -> list[str]:
    codes = sum(e.code is not None for e in codeset.entries)
    prefixes = len(codeset.entries) - codes
    unconfirmed = sum(not e.confirmed for e in codeset.entries)
    systems = ", ".join(dict.fromkeys(system_name(e.system) for e in codeset.entries))
    size = f"{codes} code{'s' * (codes != 1)}" + (f" and {prefixes} prefix{'es' * (prefixes != 1)}" if prefixes else "")
    lines = [f'<a id="{_anchor(codeset.name)}"></a>', f"### `{codeset.name}`", "", text(codeset.title), "",
             f"- {size} ({systems})" + (f", {unconfirmed} not confirmed" if unconfirmed else "")
             + f"; read by {', '.join(readers)}"]
    meaning = [f"{system_name(system)} << {code}" for system, code in codeset.intension]
    if codeset.value_set:
        meaning.append(f"ValueSet {codeset.value_set}")
    if meaning:
        lines.append(f"- means beyond its list: {text('; '.join(meaning))}")
    if codeset.provenance is not None:
        p = codeset.provenance
        lines += [f"- source: {text(p.source)}", f"- version: {text(p.version)}", f"- how expanded: {text(p.method)}"]
    return lines + [""]


def clinical_reading(trials: Iterable[Trial], readings: Iterable[Reading]) -> str:
    """The Markdown of docs/clinical-reading.md for these trials (in NCT id order)."""
    trials = sorted(trials, key=lambda t: t.id)
    lines = [f"<!-- Generated by `{COMMAND}` from the trial definitions",
             "     (cds_service/trials/definitions/, codesets/, units.yaml, reading.yaml). Do not edit: change",
             "     those files, then run the command again (tests/test_docs.py fails while this file is stale). -->",
             "", "# How the trials' criteria are read", "",
             "For clinicians, study coordinators and clinical reviewers: every criterion of every trial the "
             "service ships, with the protocol text it encodes (verbatim), how the service reads it, and the code "
             "sets it recognises records by, then where each code set comes from. The card shows each criterion's "
             "title, result and evidence; this page is the reading behind them.", "",
             "Trials: " + "; ".join(f"{t.id} ({text(t.definition.short_title)})" for t in trials) + ".", "",
             "## How every criterion is read", ""]
    lines += [f"**{text(r.title)}.** {r.text}\n" for r in readings]
    readers: dict[str, list[str]] = {}
    sets: dict[str, CodeSet] = {}
    for t in trials:
        lines += _trial(t)
        for c in t.definition.criteria:
            for name in dict.fromkeys(c.rule.codeset_names()):
                readers.setdefault(name, []).append(f"{t.id} `{c.id}`")
                sets.setdefault(name, t.library.sets[name])
    lines += ["## Code sets", "",
              "Every code keeps its own source in `cds_service/trials/codesets/*.yaml`; `confirmed: false` marks a "
              "code found in one secondary source only. A set whose list is partial says what it means beyond it "
              "(SNOMED CT `<<` roots, a ValueSet), for the optional terminology server.", ""]
    for name in sorted(sets):
        lines += _codeset(sets[name], readers[name])
    bridges = sorted({(analyte, b.from_unit, b.to_unit, b.factor, b.source)
                      for t in trials for analyte, found in t.units.bridges.items() for b in found})
    if bridges:
        lines += ["## Unit conversions UCUM cannot make", "",
                  "Per analyte (`cds_service/trials/units.yaml`), chained with UCUM on both sides.", "",
                  "| analyte | from | to | factor | source |", "|---|---|---|---|---|"]
        lines += [f"| {a} | `{f}` | `{to}` | {factor} | {text(source)} |" for a, f, to, factor, source in bridges]
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"
