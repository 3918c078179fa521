"""Load through nginx: hook calls per second, their p50 / p95 and the 5xx count,
with and without feedback writers mixed in (a script that prints figures, not a test).

Starts, on 127.0.0.1 free ports, `cds-service serve --workers 2` (the demo
configuration: prefetch only, no FHIR server, no client authentication, as on
loopback) and nginx in front of it with deploy/nginx.conf (TLS, a self-signed
certificate made here), then drives it with wrk (https, keep-alive):

  1. hooks: `--connections` (16) wrk connections posting the packaged demo request
     (eligible.json, a fresh hookInstance per call), for `--seconds` (60);
  2. hooks + writers: the same, and at the same time `--writers` (16) connections
     posting feedback (one overridden item per post, a fresh card UUID each).

A short warm-up precedes each run. Both processes are stopped by pid at the end.

  python bench/load_bench.py [--seconds 60] [--database postgresql://...] [--direct]

--database: CDS_DATABASE for the service (default: a SQLite file in a temp dir).
--direct: wrk talks to the service itself (no nginx), for comparison.
Needs nginx and wrk (Debian: apt-get install nginx wrk).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).parent / "cds-service"
DEMO = ROOT / "cds_service" / "demo" / "hook-requests" / "eligible.json"
SERVICE = "/cds-services/trial-eligibility"

_spec = importlib.util.spec_from_file_location("nginx_conf", ROOT / "deploy" / "nginx_conf.py")
nginx_conf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(nginx_conf)

# Shared by both wrk scripts: status counts per thread, summed in done(), printed as one JSON line.
_LUA_COMMON = r"""
local threads = {}
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("seed", counter)
  table.insert(threads, thread)
end
local function hex(n)
  local t = {}
  for i = 1, n do t[i] = string.format("%x", math.random(0, 15)) end
  return table.concat(t)
end
function uuid()
  return hex(8) .. "-" .. hex(4) .. "-4" .. hex(3) .. "-" .. ({"8", "9", "a", "b"})[math.random(1, 4)] .. hex(3)
         .. "-" .. hex(12)
end
function init(args)
  math.randomseed(os.time() * 1000 + seed)
  s2, s4, s5, other = 0, 0, 0, 0
end
function response(status, headers, body)
  if status >= 500 then s5 = s5 + 1
  elseif status >= 400 then s4 = s4 + 1
  elseif status >= 200 and status < 300 then s2 = s2 + 1
  else other = other + 1 end
end
function done(summary, latency, requests)
  local c = {s2 = 0, s4 = 0, s5 = 0, other = 0}
  for _, t in ipairs(threads) do
    for k, _ in pairs(c) do c[k] = c[k] + t:get(k) end
  end
  local e = summary.errors
  io.write(string.format('RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, '
    .. '"s2xx": %d, "s4xx": %d, "s5xx": %d, "other": %d, "socket_errors": %d, "timeouts": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95), latency:percentile(99),
    c.s2, c.s4, c.s5, c.other, e.connect + e.read + e.write, e.timeout))
end
"""

_LUA_HOOKS = r"""
local f = assert(io.open("%(body)s", "rb"))
local body = f:read("*a")
f:close()
local cut = assert(body:find("%(instance)s", 1, true))
local head, tail = body:sub(1, cut - 1), body:sub(cut + %(instance_len)d)
local headers = {["Content-Type"] = "application/json"}
function request()
  return wrk.format("POST", "%(path)s", headers, head .. uuid() .. tail)
end
"""

_LUA_FEEDBACK = r"""
local headers = {["Content-Type"] = "application/json"}
function request()
  local body = '{"feedback": [{"card": "' .. uuid() .. '", "outcome": "overridden", "overrideReason": '
    .. '{"reason": {"system": "https://cds-service.org/fhir/CodeSystem/trial-card-override", '
    .. '"code": "already-screened"}}, "outcomeTimestamp": "2026-06-15T14:03:00Z"}]}'
  return wrk.format("POST", "%(path)s/feedback", headers, body)
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tool(name: str) -> str:
    found = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)),
                                       None)
    if found is None:
        sys.exit(f"load_bench: {name} is not installed (Debian: apt-get install {name})")
    return found


def wait_until_up(url: str, proc: subprocess.Popen, log: Path, context: ssl.SSLContext | None = None) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=5, context=context) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"load_bench: {url} did not come up:\n{log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_wrk(wrk: str, url: str, script: Path, connections: int, seconds: float) -> subprocess.Popen:
    return subprocess.Popen([wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "30s",
                             "-s", str(script), url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def result(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate()
    line = next((line for line in out.splitlines() if line.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"load_bench: wrk printed no result:\n{out[-2000:]}")
    r = json.loads(line.removeprefix("RESULT "))
    r["rate"] = r["requests"] / (r["duration_us"] / 1e6)
    return r


def describe(r: dict, noun: str) -> str:
    problems = r["s4xx"] + r["other"] + r["socket_errors"] + r["timeouts"]
    return (f"{r['rate']:7.1f} {noun}/s  p50 {r['p50_us'] / 1000:6.1f} ms  p95 {r['p95_us'] / 1000:6.1f} ms  "
            f"5xx {r['s5xx']}  ({r['requests']:,} calls; 4xx {r['s4xx']}, socket errors/timeouts "
            f"{r['socket_errors'] + r['timeouts']}{'' if not problems else ' <- look'})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60, help="length of each measured run (default 60)")
    parser.add_argument("--warmup", type=float, default=5, help="seconds of load before each run (default 5)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections posting hook calls")
    parser.add_argument("--writers", type=int, default=16, help="wrk connections posting feedback")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--database", help="CDS_DATABASE (default: a SQLite file in a temp dir)")
    parser.add_argument("--direct", action="store_true", help="no nginx: wrk calls the service itself")
    parser.add_argument("--only", choices=("hooks", "writers"), help="run one of the two runs")
    args = parser.parse_args(argv)

    wrk = tool("wrk")
    nginx = None if args.direct else tool("nginx")
    tmp = Path(tempfile.mkdtemp(prefix="load-bench-"))
    os.chmod(tmp, 0o755)  # nginx's workers (nobody, when we are root) write temp files under it
    procs: list[subprocess.Popen] = []
    try:
        service_port = free_port()
        env = dict(os.environ, CDS_DATA_DIR=str(tmp / "data"), CDS_EVALUATION_DATE="2026-06-15")
        env.pop("CDS_TRUSTED_CLIENTS", None)
        if args.database:
            env["CDS_DATABASE"] = args.database
        service_log = tmp / "service.log"
        with open(service_log, "wb") as log:
            procs.append(subprocess.Popen([str(EXE), "serve", "--port", str(service_port), "--workers",
                                           str(args.workers), "--threads", str(args.threads)],
                                          env=env, stdout=subprocess.DEVNULL, stderr=log))
        wait_until_up(f"http://127.0.0.1:{service_port}/healthz", procs[0], service_log)
        if args.direct:
            base = f"http://127.0.0.1:{service_port}"
            through = "direct (no proxy)"
        else:
            proxy_port = free_port()
            cert, key = nginx_conf.self_signed(tmp / "tls", "localhost")
            (tmp / "nginx-temp").mkdir()
            config = tmp / "nginx.conf"
            config.write_text(nginx_conf.render({
                "CDS_PROXY_SERVER_NAME": "localhost", "CDS_PROXY_HTTPS_PORT": str(proxy_port),
                "CDS_PROXY_TLS_CERT": str(cert), "CDS_PROXY_TLS_KEY": str(key),
                "CDS_PROXY_UPSTREAM": f"127.0.0.1:{service_port}", "CDS_PROXY_TEMP_DIR": str(tmp / "nginx-temp")}))
            nginx_log = tmp / "nginx-error.log"
            with open(nginx_log, "wb") as err:
                # The access log (a line per call) is not kept: it is not what is measured.
                procs.append(subprocess.Popen([nginx, "-p", f"{tmp}/", "-c", str(config), "-g",
                                               f"daemon off; pid {tmp}/nginx.pid;"],
                                              stdout=subprocess.DEVNULL, stderr=err))
            base = f"https://127.0.0.1:{proxy_port}"
            wait_until_up(f"{base}/healthz", procs[1], nginx_log, ssl.create_default_context(cafile=str(cert)))
            version = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip().split("/")[-1]
            through = f"through nginx {version} (TLS)"

        demo = DEMO.read_text()
        instance = json.loads(demo)["hookInstance"]
        hooks_lua, feedback_lua = tmp / "hooks.lua", tmp / "feedback.lua"
        hooks_lua.write_text(_LUA_COMMON + _LUA_HOOKS % {"body": DEMO, "instance": instance,
                                                         "instance_len": len(instance), "path": SERVICE})
        feedback_lua.write_text(_LUA_COMMON + _LUA_FEEDBACK % {"path": SERVICE})
        url = base + SERVICE

        database = "PostgreSQL" if args.database else "SQLite"
        print(f"load_bench: {os.cpu_count()} cores (load average {os.getloadavg()[0]:.2f} at start), "
              f"service {args.workers} workers x {args.threads} threads, {database}, {through}, "
              f"wrk {args.connections} connections, {args.seconds:g} s per run (+{args.warmup:g} s warm-up)",
              flush=True)
        if args.only != "writers":
            if args.warmup:
                result(run_wrk(wrk, url, hooks_lua, args.connections, args.warmup))
            hooks = result(run_wrk(wrk, url, hooks_lua, args.connections, args.seconds))
            print(f"  {'hooks':<20}: {describe(hooks, 'hooks')}", flush=True)
        if args.only != "hooks":
            if args.warmup:
                warm = [run_wrk(wrk, url, hooks_lua, args.connections, args.warmup),
                        run_wrk(wrk, url, feedback_lua, args.writers, args.warmup)]
                for w in warm:
                    result(w)
            both = [run_wrk(wrk, url, hooks_lua, args.connections, args.seconds),
                    run_wrk(wrk, url, feedback_lua, args.writers, args.seconds)]
            hooks, feedback = (result(w) for w in both)
            print(f"  {f'hooks + {args.writers} writers':<20}: {describe(hooks, 'hooks')}")
            print(f"  {'feedback (writers)':<20}: {describe(feedback, 'posts')}")
        print(f"  load average at end: {os.getloadavg()[0]:.2f}")
        problems = re.findall(r'"level": ?"(?:ERROR|CRITICAL)"', service_log.read_text())
        if problems:
            print(f"  service log: {len(problems)} error lines ({service_log})")
    finally:
        for proc in reversed(procs):
            stop(proc)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
