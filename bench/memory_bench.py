"""What a worker's caches hold: a process's growth after evaluating N distinct charts
(the demo eligible patient padded to 30 observations, every resource id but the
Patient's made new, so that each chart is validated and read anew), and the entries
each bounded cache of the engine then holds (the validation memo is most of it).

    .venv/bin/python bench/memory_bench.py [--charts 1500]
"""

from __future__ import annotations

import argparse
import gc
import importlib
import pkgutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def _resident_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 1e6


def engine_caches() -> dict[str, object]:
    """The module-level lru_caches of the engine, by qualified name."""
    import cds_service.engine as engine

    found = {}
    for info in pkgutil.walk_packages(engine.__path__, "cds_service.engine."):
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if hasattr(value, "cache_info") and getattr(value, "__module__", "") == module.__name__:
                found[f"{module.__name__.removeprefix('cds_service.engine.')}.{name}"] = value
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--charts", type=int, default=1500)
    args = parser.parse_args()

    from hook_bench import AS_OF, chart_resources, distinct_requests

    from cds_service.engine import PatientRecord, evaluate
    from cds_service.trials import load_trials

    trial = next(iter(load_trials().values()))
    charts = (chart_resources(request) for request in distinct_requests(args.charts + 1))
    evaluate(trial, PatientRecord(next(charts)), AS_OF)  # loads what every call uses
    gc.collect()
    before = _resident_mb()
    for resources in charts:
        evaluate(trial, PatientRecord(resources), AS_OF)
    gc.collect()
    grown = _resident_mb() - before
    print(f"process growth after evaluating {args.charts:,} distinct charts of 30 observations: +{grown:.1f} MB")
    for name, cache in sorted(engine_caches().items()):
        info = cache.cache_info()
        print(f"  {name}: {info.currsize:,} of {info.maxsize:,} entries")


if __name__ == "__main__":
    main()
