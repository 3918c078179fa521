"""Writes the NCT01325207 gold set from cases.py: tests/gold/nct01325207/*.json and
tests/gold/nct01325207.yaml. Run after changing a case, and commit what it writes:

    .venv/bin/python tests/gold/generator/generate.py
"""
import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from builder import BASELINE, CASES, OUT, base  # noqa: E402
import cases  # noqa: E402,F401  (registers the cases)


def main(out: Path = OUT) -> None:
    """Write the patients into `out` and the expectations beside it (`out`.yaml)."""
    out.mkdir(exist_ok=True)
    for old in out.glob("*.json"):
        old.unlink()
    records = []
    for i, (slug, description, change, expect, reasons, orders, pending, prefetch_only) in enumerate(CASES, 1):
        pid = f"h{i:03d}"
        patient = base(pid)
        change(patient)
        name = f"{pid}-{slug}.json"
        (out / name).write_text(json.dumps(patient.bundle(), indent=2, ensure_ascii=False) + "\n")
        criteria = dict(BASELINE, **expect)
        results = set(criteria.values())
        status = "ineligible" if "fail" in results else "needs-data" if "unknown" in results else "eligible"
        record = {"file": name, "patient": pid, "description": description, "status": status,
                  "criteria": {k: criteria[k] for k in BASELINE}}
        for key, value in (("reasons", reasons), ("orders", orders), ("pendingEngine", pending),
                           ("prefetchOnly", prefetch_only)):
            if value:
                record[key] = value
        records.append(record)
    document = {"asOf": "2026-06-15", "trial": "NCT01325207", "patients": records}
    with open(out.with_suffix(".yaml"), "w") as f:
        f.write((HERE / "header.txt").read_text())
        yaml.safe_dump(document, f, sort_keys=False, allow_unicode=True, width=120)
    print(len(records), "cases")


if __name__ == "__main__":
    main()
