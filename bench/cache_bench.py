"""What each cache earns: hook calls with the cache and without it, interleaved.

For each cache (a "toggle": a patch that makes the service run without it, and its
undo), one app in one process takes the hook_bench prefetch rows (100 and 1,000
observations, "history" and "other tests"; the same chart again and again, as the
hook_bench "p50" rows) in pairs of calls, one with the cache and one without (which
goes first alternates), so that both calls of a pair meet the same load on a shared,
noisy machine. Per row: the median over pairs of the ratio of the two calls'
service-side times (1.20: the hook is 20 % slower without the cache), and the median
CPU time going without adds (this thread's, so that other processes do not count).

A cache stays only if removing it slows the hook by >= 15 % at 100 or at 1,000
observations (issue 15); the figures quoted next to each kept cache come from here.

  .venv/bin/python bench/cache_bench.py [--pairs 60] [toggle ...]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from hook_bench import AS_OF, SERVICE, padded_request  # noqa: E402

from cds_service.hooks.app import create_app  # noqa: E402
from cds_service.hooks.config import Settings  # noqa: E402
from cds_service.hooks.server import settle_gc  # noqa: E402

ROWS = ((100, True), (1000, True), (100, False), (1000, False))
Undo = Callable[[], None]


def swap(owner: object, name: str, value: object) -> Undo:
    """Set owner.name to value; the undo puts the original back."""
    original = getattr(owner, name)
    setattr(owner, name, value)
    return lambda: setattr(owner, name, original)


def undo_all(undos: list[Undo]) -> Undo:
    return lambda: [undo() for undo in reversed(undos)]


# The caches, each as a patch that takes it away (returns its undo). Filled in below.
TOGGLES: dict[str, Callable[[object], Undo]] = {}


def toggle(name: str):
    def register(fn: Callable[[object], Undo]) -> Callable[[object], Undo]:
        TOGGLES[name] = fn
        return fn
    return register


@toggle("instant-regex")
def _instant_regex(app) -> Undo:
    import re
    from cds_service.engine.rules import readers
    return swap(readers, "_INSTANT", re.compile(r"(?!)"))


@toggle("date-types")
def _date_types(app) -> Undo:
    from cds_service.engine.rules import readers
    return swap(readers, "_date_type", readers._date_type.__wrapped__)


@toggle("ucum-lru")
def _ucum_lru(app) -> Undo:
    from cds_service.engine import quantities
    return undo_all([swap(quantities, "_parse", quantities._parse.__wrapped__),
                     swap(quantities, "_factor", quantities._factor.__wrapped__)])


@toggle("mentions-any-lru")
def _mentions_any(app) -> Undo:
    undos = []
    for trial in app.extensions["trial_eligibility"].trials:
        names = trial.result_names
        if names is not None:
            trial.__dict__["result_names"] = names.__wrapped__
            undos.append(lambda trial=trial, names=names: trial.__dict__.__setitem__("result_names", names))
    return undo_all(undos)


@toggle("gc-freeze")
def _gc_freeze(app) -> Undo:
    """Nothing frozen: neither what start-up built nor the validated models."""
    import gc
    from cds_service.hooks.server import MemoFreezer
    gc.unfreeze()
    undo = swap(MemoFreezer, "after_response", lambda self: None)
    return undo_all([lambda: gc.freeze(), undo])


def first_sight() -> None:
    """Forget what a chart's first call leaves behind: its validated models (the
    units it uses are common to every chart)."""
    from cds_service.engine.validation import validate_serialized

    validate_serialized.cache_clear()


def _call(client, body: bytes, latencies: list[float], cold: bool = False) -> tuple[float, float]:
    """One hook call: its service-side ms (wall clock, as the audit gets it) and the CPU ms
    of this thread over the whole call (time.thread_time: what other processes on a
    shared machine take does not count; the test client's own work does, the same
    with the cache and without)."""
    if cold:
        first_sight()
    start = time.thread_time()
    response = client.post(SERVICE, data=body, content_type="application/json", buffered=True)
    cpu = (time.thread_time() - start) * 1000
    assert response.status_code == 200, response.get_json()
    return latencies[-1], cpu


def measure(app, name: str, pairs: int, cold: bool) -> None:
    """One toggle over the four rows: `pairs` pairs of calls, one with the cache and
    one without (which goes first alternates), so that both meet the same load.
    Printed per row: `wall`, the median over pairs of the ratio of their service-side
    times; `ms`, the median service-side time with the cache; `+ms`, the median over
    pairs of the CPU ms going without adds; `cpu`, 1 + that over `ms`."""
    client = app.test_client()
    latencies: list[float] = []
    # The audit row's service-side time, taken instead of written to the database.
    app.extensions["trial_eligibility"].store.record_hook_call = lambda **row: latencies.append(row["latency_ms"])
    cells = []
    for n, history in ROWS:
        body = orjson.dumps(padded_request(n, history=history))
        for _ in range(10):  # warm up
            _call(client, body, latencies)
        undo = TOGGLES[name](app)
        try:
            for _ in range(3):  # and without the cache
                _call(client, body, latencies)
        finally:
            undo()
        ratios, deltas, walls = [], [], []
        for i in range(pairs):
            result = {}
            for without in ((False, True) if i % 2 == 0 else (True, False)):
                undo = TOGGLES[name](app) if without else None
                try:
                    result[without] = _call(client, body, latencies, cold)
                finally:
                    if undo is not None:
                        undo()
            (wall_on, cpu_on), (wall_off, cpu_off) = result[False], result[True]
            ratios.append(wall_off / wall_on)
            deltas.append(cpu_off - cpu_on)
            walls.append(wall_on)
        with_ms, delta = statistics.median(walls), statistics.median(deltas)
        cells.append(f"{1 + delta / with_ms:>5.2f} {statistics.median(ratios):>5.2f} {with_ms:>5.2f} {delta:>+6.2f}")
    print(f"{name:<22} " + " | ".join(cells), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=60)
    parser.add_argument("--cold", action="store_true",
                        help="every call the chart's first (first_sight): as hook_bench's cold column")
    parser.add_argument("toggles", nargs="*", choices=[[]] + sorted(TOGGLES), metavar="toggle",
                        help=f"which caches (default: all): {', '.join(sorted(TOGGLES))}")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        logging.disable(logging.CRITICAL)  # the audit lines
        app = create_app(Settings(database=Path(tmp) / "bench.sqlite3", evaluation_date=AS_OF))
        settle_gc(app)  # as each server worker does after start-up (cds_service/hooks/server.py)
        print(f"hook calls with full prefetch{' (each the first of its chart)' if args.cold else ''}, {args.pairs} "
              "pairs of calls without each cache and with it; per row:")
        print("wall = median ratio of service-side ms; ms = service-side median with; +ms = median CPU ms added;")
        print("cpu = 1 + +ms / ms")
        print(f"{'cache':<22} " + " | ".join(f"{f'{n:,} ' + ('history' if h else 'other tests'):^26}" for n, h in ROWS))
        print(f"{'':<22} " + " | ".join(f"{'cpu':>5} {'wall':>5} {'ms':>5} {'+ms':>6}" for _ in ROWS))
        for name in args.toggles or sorted(TOGGLES):
            measure(app, name, args.pairs, args.cold)


if __name__ == "__main__":
    main()
