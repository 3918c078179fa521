"""The Redis replay store (CDS_JTI_STORE=redis://...) against a real redis-server
started on 127.0.0.1 for this module. CI installs redis-server; locally the
tests skip with a message if it is missing (never under CI=true)."""

import os
import shutil
import socket
import subprocess
import time

import pytest

from cds_service.hooks.replay import RedisJtiStore, SqliteJtiStore, jti_store_for
from netutil import free_port


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is missing; .ci/run installs it")
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path_factory.mktemp("redis"))],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


def test_replay_is_seen_across_stores_and_hosts(redis_url):
    now = time.time()
    a, b = RedisJtiStore(redis_url), RedisJtiStore(redis_url)  # two workers, or two hosts
    assert a.remember("https://ehr.example.org", "jti-1", int(now) + 300) is True
    assert b.remember("https://ehr.example.org", "jti-1", int(now) + 300) is False
    assert b.remember("https://other.example.org", "jti-1", int(now) + 300) is True


def test_entries_expire_with_the_token(redis_url):
    clock = [time.time()]
    store = RedisJtiStore(redis_url, leeway=0, clock=lambda: clock[0])
    assert store.remember("iss", "short-lived", int(clock[0]) + 1) is True
    time.sleep(2.2)
    assert store.remember("iss", "short-lived", int(time.time()) + 60) is True


def test_store_chosen_by_setting(redis_url, tmp_path):
    assert isinstance(jti_store_for("sqlite", tmp_path / "jti.sqlite3", leeway=60), SqliteJtiStore)
    assert isinstance(jti_store_for(redis_url, tmp_path / "unused", leeway=60), RedisJtiStore)
