"""The hook benchmark runs end to end (a few calls; its figures are not judged here:
speed is measured by running it, see bench/README.md)."""

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).parents[1] / "bench" / "hook_bench.py"


def test_hook_bench_runs_every_section():
    done = subprocess.run([sys.executable, str(BENCH), "--calls", "2"], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    for row in ("100 history", "1,000 history", "100 other tests", "1,000 other tests"):
        assert row in out, out
    assert "after 300 other charts' first calls" in out, out
    for label in ("not frozen (start-up only)", "frozen (the worker's)"):
        assert sum(1 for line in out.splitlines() if line.strip().startswith(label)) == 2, out
    assert "without prefetch: 7 FHIR requests per call" in out, out
    look_back = next(line for line in out.splitlines() if "to the look-back:" in line)
    every_page = next(line for line in out.splitlines() if "every page:" in line)
    assert "cut: look-back" in look_back and "(1 for the lab history" in look_back, look_back
    assert "(20 for the lab history" in every_page, every_page


def test_memory_bench_measures_the_growth_and_the_caches():
    done = subprocess.run([sys.executable, str(BENCH.with_name("memory_bench.py")), "--charts", "20"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert "20 distinct charts" in lines[0] and lines[0].endswith(" MB"), done.stdout
    validated = next(line for line in lines if "validate_serialized" in line)
    assert int(validated.split(": ")[1].split()[0].replace(",", "")) > 20, validated  # each chart validated anew


def test_cache_bench_measures_a_cache_with_and_without():
    done = subprocess.run([sys.executable, str(BENCH.with_name("cache_bench.py")), "--pairs", "2", "instant-regex"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    row = next(line for line in done.stdout.splitlines() if line.startswith("instant-regex"))
    assert len(row.split("|")) == 4, done.stdout  # the four hook_bench rows
