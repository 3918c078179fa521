"""What a worker's memos hold: a process's growth after evaluating N distinct charts
(the demo eligible patient padded to 30 observations, every resource id but the
Patient's made new, so that each chart is validated and read anew), with the identity memos of
engine/memo.py as shipped and with them off. The validation memo (record.py) is on
in both runs; the difference is what the identity memos add.

    .venv/bin/python bench/memory_bench.py [--charts 1500]
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def _resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 1e6


def measure(charts: int, memos: bool) -> None:
    """One run, in this process: prints the growth in MB and the memos' sizes."""
    from hook_bench import AS_OF, chart_resources, distinct_requests

    from cds_service.engine import PatientRecord, evaluate
    from cds_service.trials import load_trials

    import cds_service.engine.rules as rules
    from cds_service.engine.memo import bindings

    remembered = bindings(rules)
    if not memos:
        for module, name, fn in remembered:
            setattr(module, name, fn.__wrapped__)
    trial = next(iter(load_trials().values()))
    charts_made = (chart_resources(request) for request in distinct_requests(charts + 1))
    evaluate(trial, PatientRecord(next(charts_made)), AS_OF)  # loads what every call uses
    gc.collect()
    before = _resident_mb()
    for resources in charts_made:
        evaluate(trial, PatientRecord(resources), AS_OF)
    gc.collect()
    sizes = {name: len(fn.entries) for _, name, fn in remembered} if memos else {}
    print(f"{'on' if memos else 'off'} {_resident_mb() - before:.1f} {sum(sizes.values())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--charts", type=int, default=1500)
    parser.add_argument("--run", choices=["on", "off"], help=argparse.SUPPRESS)  # one measurement, in a child
    args = parser.parse_args()
    if args.run:
        measure(args.charts, args.run == "on")
        return
    print(f"process growth after evaluating {args.charts:,} distinct charts of 30 observations")
    for run in ("off", "on"):  # each in a fresh process: growth is not shared between the runs
        out = subprocess.run([sys.executable, __file__, "--charts", str(args.charts), "--run", run],
                             capture_output=True, text=True, check=True).stdout.split()
        label = "identity memos on " if run == "on" else "identity memos off"
        held = f", {int(out[2]):,} answers held" if run == "on" else ""
        print(f"  {label}: +{float(out[1]):.1f} MB{held}")


if __name__ == "__main__":
    main()
