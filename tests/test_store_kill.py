"""Acknowledged feedback is stored feedback, on both back ends, even when workers
die mid-stream: `cds-service serve` with 2 workers takes a steady stream of
feedback posts from several writers while its workers are killed (SIGKILL) one
after another, and finally the master and every worker at once. Every entry
that got its 200 must be in the database afterwards."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from cds_service.hooks.store import Store
from netutil import free_port
from postgres_server import database, postgres_url  # noqa: F401,F811  (fixtures)

EXE = Path(sys.executable).parent / "cds-service"
WRITERS = 6
ITEMS = 30  # per writer
KILLS = 3  # workers killed while the writers post (at least), then master and workers at once
MAX_KILLS = 12
PATIENCE = 180.0  # seconds: an upper bound for the whole stream, far above what it takes


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def post(url: str, body: dict) -> int | None:
    """The status, or None when the connection failed (a killed worker, a respawn)."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except (OSError, ValueError, http.client.HTTPException):  # reset, refused, a truncated answer
        return None


def test_acknowledged_feedback_survives_killed_workers(database, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = dict(os.environ, CDS_DATA_DIR=str(tmp_path / "data"), CDS_DATABASE=str(database),
               CDS_EVALUATION_DATE="2026-06-15")
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([str(EXE), "serve", "--port", str(port), "--workers", "2"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    acknowledged: set[str] = set()
    failures: list[int | None] = []  # posts that got no 200: none may be a 5xx
    errors: list[BaseException] = []  # of the writer threads
    lock = threading.Lock()
    started = time.monotonic()
    try:
        while post(f"{base}/healthz", {}) is None:  # 405 once it listens
            assert proc.poll() is None and time.monotonic() - started < PATIENCE, (
                (tmp_path / "serve.log").read_text()[-3000:])
            time.sleep(0.2)

        def writer():
            try:
                write()
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)

        def write():
            for _ in range(ITEMS):
                item = {"card": str(uuid.uuid4()), "outcome": "overridden",
                        "outcomeTimestamp": "2026-06-15T14:03:00Z"}
                while time.monotonic() - started < PATIENCE:
                    status = post(f"{base}/cds-services/trial-eligibility/feedback", {"feedback": [item]})
                    if status == 200:
                        with lock:
                            acknowledged.add(item["card"])
                        break
                    with lock:
                        failures.append(status)
                    time.sleep(0.05)  # a worker is being replaced: retry, the entry is idempotent

        threads = [threading.Thread(target=writer) for _ in range(WRITERS)]
        for thread in threads:
            thread.start()
        killed = 0
        # Mid-stream: each time a share of the entries has been acknowledged since the last kill,
        # one worker dies; at least KILLS times, and on until one has cut a request in flight.
        while killed < MAX_KILLS and (killed < KILLS or None not in failures):
            mark = len(acknowledged)
            while len(acknowledged) < mark + WRITERS * ITEMS // (MAX_KILLS + 2) and any(
                    t.is_alive() for t in threads):
                time.sleep(0.01)
            workers = children(proc.pid)
            if not workers or not any(t.is_alive() for t in threads):
                break
            os.kill(workers[killed % len(workers)], signal.SIGKILL)
            killed += 1
        for thread in threads:
            thread.join()
        # And then everything at once, as a power cut would leave the processes.
        for pid in children(proc.pid) + [proc.pid]:
            os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)

    assert errors == [] and killed >= KILLS
    assert not [s for s in failures if s is not None and s >= 500], failures
    assert len(acknowledged) == WRITERS * ITEMS  # every entry got its 200 in the end
    stored = {row["card"] for row in Store(database).feedback()}
    assert acknowledged <= stored, f"acknowledged but not stored: {sorted(acknowledged - stored)[:5]}"
    print(f"{len(acknowledged)} acknowledged, {killed} workers killed, {failures.count(None)} posts cut")
    assert None in failures  # the kills did cut requests in flight
