"""Starting and stopping the local HAPI FHIR test server (tests/hapi/) on 127.0.0.1.

Used by the integration tests and by .ci/run. CDS_TEST_HAPI_URL points at an
already running server (CI starts one for the tests and the harness)."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import requests

from netutil import free_port  # tests/ is on sys.path: as a script and under pytest

HAPI_DIR = Path(__file__).parent / "hapi"


def java_tools_missing() -> str | None:
    missing = [tool for tool in ("java", "mvn") if shutil.which(tool) is None]
    return f"{' and '.join(missing)} not installed" if missing else None


# Pages of 2: every gold patient's Observation and Condition searches span several
# `_getpages` pages, whatever `_count` the service asks for.
PAGE_SIZE = 2


class HapiServer:
    def __init__(self, port: int | None = None, log: Path | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/fhir"
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.start_seconds = 0.0

    def start(self, timeout: float = 600.0) -> "HapiServer":
        out = open(self.log, "wb") if self.log else subprocess.DEVNULL
        started = time.monotonic()
        self.proc = subprocess.Popen(["bash", str(HAPI_DIR / "run.sh"), str(self.port),
                                      f"-Dhapi.pageSize={PAGE_SIZE}", f"-Dhapi.maxPageSize={PAGE_SIZE}"], stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"HAPI exited with {self.proc.returncode} (log: {self.log})")
            try:
                if requests.get(f"{self.url}/metadata", timeout=5).status_code == 200:
                    self.start_seconds = time.monotonic() - started
                    return self
            except requests.RequestException:
                pass
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"HAPI did not answer /metadata within {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


def main() -> None:
    """`python tests/hapi_server.py PORT`: run HAPI in the foreground (for .ci/run)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    args = parser.parse_args()
    os.execvp("bash", ["bash", str(HAPI_DIR / "run.sh"), str(args.port), f"-Dhapi.pageSize={PAGE_SIZE}",
                       f"-Dhapi.maxPageSize={PAGE_SIZE}"])


if __name__ == "__main__":
    main()
