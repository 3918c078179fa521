"""Engine speed against JSON parsing, for patients with 10 to 10,000 observations.

The patient is the gold baseline (every criterion has data) plus N - 12
observations: in the first table, observations no criterion reads (vital signs,
other labs), as a whole chart has; in the second, older results of the
criteria's own lab tests (blood counts and liver tests every few days, going
back years), as a prefetch restricted to those codes returns. For each size it
prints the median of several runs of:
  parse     orjson.loads of the bundle bytes
  evaluate  grouping by patient + indexing + evaluating all 16 criteria
            (from parsed JSON; what the service does after parsing)
Timed with the cyclic garbage collector off, as timeit does.
and the ratio evaluate / parse. Target: <= 3x at 1,000 and 10,000.

  python bench/engine_bench.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import gc
import json
import random
import statistics
import sys
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cds_service.engine import PatientRecord, evaluate  # noqa: E402
from cds_service.fhir.bundles import entries_of, group_by_patient, parse_fhir_json  # noqa: E402
from cds_service.trials import load_trials  # noqa: E402

BASELINE = ROOT / "tests" / "gold" / "patients" / "g001-baseline-eligible.json"
AS_OF = dt.date(2026, 6, 15)

# Codes no criterion reads: vital signs and common labs.
NOISE_CODES = [("8867-4", "/min"), ("8310-5", "Cel"), ("9279-1", "/min"), ("29463-7", "kg"), ("8302-2", "cm"),
               ("39156-5", "kg/m2"), ("2339-0", "mg/dL"), ("2160-0", "mg/dL"), ("2951-2", "mmol/L"),
               ("2823-3", "mmol/L"), ("2075-0", "mmol/L"), ("1751-7", "g/dL"), ("6690-2", "10*3/uL"),
               ("789-8", "10*6/uL"), ("4544-3", "%"), ("785-6", "pg"), ("786-4", "g/dL"), ("787-2", "fL"),
               ("2093-3", "mg/dL"), ("2571-8", "mg/dL"), ("33914-3", "mL/min/{1.73_m2}"), ("59408-5", "%")]


def _observation_entry(i: int, kind: str, category: str, code: str, day: dt.date, quantity: dict,
                       reference_range: dict) -> dict:
    uuid_group = {"noise": 8000, "history": 9000}[kind]
    return {
        "fullUrl": f"urn:uuid:00000000-0000-4000-{uuid_group}-{i:012d}",
        "resource": {
            "resourceType": "Observation", "id": f"{kind}-{i}", "status": "final",
            "meta": {"lastUpdated": f"{day.isoformat()}T12:00:00Z"},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": category}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": code}], "text": f"Test {code}"},
            "subject": {"reference": "Patient/g001"},
            "effectiveDateTime": f"{day.isoformat()}T08:{i % 60:02d}:00-04:00",
            "issued": f"{day.isoformat()}T10:{i % 60:02d}:00-04:00",
            "valueQuantity": quantity,
            "referenceRange": [reference_range],
        }}


def _quantity(value: float, unit: str) -> dict:
    return {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}


def noise_observation(i: int, rng: random.Random) -> dict:
    code, unit = NOISE_CODES[i % len(NOISE_CODES)]
    day = AS_OF - dt.timedelta(days=rng.randint(0, 2000))
    return _observation_entry(i, "noise", "laboratory" if i % 3 else "vital-signs", code, day,
                              _quantity(round(rng.uniform(1, 200), 1), unit),
                              {"low": {"value": 1, "unit": unit}, "high": {"value": 250, "unit": unit}})


# The criteria's lab tests: (LOINC, unit, low, high, ULN).
HISTORY_TESTS = [("751-8", "10*3/uL", 1.8, 6.5, 7.5), ("777-3", "10*3/uL", 150, 380, 400),
                 ("718-7", "g/dL", 11.0, 14.5, 15.5), ("1975-2", "mg/dL", 0.3, 1.1, 1.2),
                 ("1742-6", "U/L", 12, 45, 55), ("1920-8", "U/L", 12, 40, 48)]


def history_observation(i: int, rng: random.Random) -> dict:
    """An older result of one of the criteria's lab tests (a panel every few days)."""
    code, unit, low, high, uln = HISTORY_TESTS[i % len(HISTORY_TESTS)]
    day = AS_OF - dt.timedelta(days=10 + 3 * (i // len(HISTORY_TESTS)))
    return _observation_entry(i, "history", "laboratory", code, day, _quantity(round(rng.uniform(low, high), 1), unit),
                              {"high": _quantity(uln, unit)})


def bundle_with(n_observations: int, history: bool = False) -> bytes:
    base = json.loads(BASELINE.read_text())
    present = sum(1 for e in base["entry"] if e["resource"]["resourceType"] == "Observation")
    rng = random.Random(n_observations)
    doc = copy.deepcopy(base)
    padding = history_observation if history else noise_observation
    doc["entry"] += [padding(i, rng) for i in range(max(0, n_observations - present))]
    return orjson.dumps(doc)


def median_seconds(fn, repeat: int) -> float:
    """Median wall time; the cyclic GC is off while timing (as timeit does), or
    parse times at 10,000 resources are dominated by collections of the heap."""
    times = []
    for _ in range(repeat):
        gc.collect()
        gc.disable()
        try:
            start = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - start)
            del result  # freed outside the timing
        finally:
            gc.enable()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--sizes", default="10,100,1000,10000")
    args = parser.parse_args()
    trial = load_trials()["NCT06462092"]

    cold = time.perf_counter()
    data = bundle_with(10)
    group = group_by_patient(parse_fhir_json(data))[0]
    first = evaluate(trial, PatientRecord(group.resources, group.full_urls), AS_OF)
    print(f"first evaluation in this process (loads the UCUM registry): {time.perf_counter() - cold:.3f} s; "
          f"status {first.status.value}")
    for history in (False, True):
        print()
        print("padded with older results of the criteria's lab tests" if history else
              "padded with observations no criterion reads")
        table(trial, [int(s) for s in args.sizes.split(",")], args.repeat, history)


def table(trial, sizes: list[int], repeat: int, history: bool) -> None:
    print(f"{'observations':>12} {'resources':>9} {'bytes':>10} {'parse ms':>9} {'evaluate ms':>11} "
          f"{'µs/resource':>11} {'eval/parse':>10}")
    for n in sizes:
        data = bundle_with(n, history)
        parsed = orjson.loads(data)
        resources = len(parsed["entry"])

        def evaluate_parsed():
            g = group_by_patient(entries_of(parsed))[0]
            result = evaluate(trial, PatientRecord(g.resources, g.full_urls), AS_OF)
            assert result.status.value == "eligible", result.status
            return result

        parse_s = median_seconds(lambda: orjson.loads(data), repeat)
        eval_s = median_seconds(evaluate_parsed, repeat)
        print(f"{n:>12,} {resources:>9,} {len(data):>10,} {parse_s * 1e3:>9.2f} {eval_s * 1e3:>11.2f} "
              f"{eval_s / resources * 1e6:>11.2f} {eval_s / parse_s:>10.2f}")


if __name__ == "__main__":
    main()
