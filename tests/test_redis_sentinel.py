"""RetentionSentinelBackend and the enforcer through a real Redis Sentinel.

A private master ``redis-server`` and a ``redis-server --sentinel`` watching it are
started for this module on free loopback ports; the backend finds the master by
asking the sentinel, as in production.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from django.core.checks import run_checks

from retention_admin.backends import RetentionSentinelBackend
from retention_admin.executor import CleanupFailed, Options, Selection, run_cleanup
from testproject.celery import app

from .redis_servers import api_policy, free_port, meta_key, reset_backend, result_backend, store
from .services import in_ci

MASTER = "retention-test-master"
DB = 2
HOUR_MS = 3600 * 1000

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning"),
]


def _wait(check: Any, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            if check():
                return
        except redis.RedisError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            message = f"{what} did not start"
            if in_ci():
                pytest.fail(message)
            pytest.skip(message)
        time.sleep(0.1)


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """(sentinel port, master port) of a sentinel watching a master of its own."""
    if shutil.which("redis-server") is None:
        if in_ci():
            pytest.fail("redis-server is not installed (CI needs it for the Sentinel tests)")
        pytest.skip("redis-server is not installed")
    directory = tmp_path_factory.mktemp("redis-sentinel")
    master_port, sentinel_port = free_port(), free_port()
    master = subprocess.Popen(
        ["redis-server", "--port", str(master_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(directory)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    config = directory / "sentinel.conf"  # Sentinel rewrites its configuration file
    config.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\ndir {directory}\n"
        f"sentinel monitor {MASTER} 127.0.0.1 {master_port} 1\n"
        f"sentinel down-after-milliseconds {MASTER} 60000\n"
    )
    watcher = subprocess.Popen(
        ["redis-server", str(config), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait(lambda: redis.Redis(port=master_port, socket_timeout=1).ping(), master, "the master redis-server")
        _wait(
            lambda: redis.Redis(port=sentinel_port, socket_timeout=1).execute_command(
                "SENTINEL", "get-master-addr-by-name", MASTER
            ),
            watcher,
            "redis-server --sentinel",
        )
        yield sentinel_port, master_port
    finally:
        for process in (watcher, master):
            process.terminate()
            process.wait(timeout=10)


def sentinel_url(sentinel_port: int) -> str:
    return f"sentinel://127.0.0.1:{sentinel_port}/{DB}"


@pytest.fixture
def master_client(sentinel: tuple[int, int]) -> Iterator[redis.Redis]:
    client = redis.Redis(port=sentinel[1], db=DB)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def sentinel_app(
    sentinel: tuple[int, int], master_client: redis.Redis, tmp_path: Path, celery_conf: Any
) -> Iterator[Any]:
    url = f"retention_admin.backends.RetentionSentinelBackend+{sentinel_url(sentinel[0])}"
    with result_backend(url, {"master_name": MASTER}, tmp_path, celery_conf) as app_:
        yield app_


def test_results_through_sentinel_get_their_policys_ttl(sentinel_app, master_client):
    api_policy("sentinel-api")
    assert isinstance(app.backend, RetentionSentinelBackend)
    store("api-1", "api.fetch")
    ttl = master_client.pttl(meta_key("api-1"))  # on the master the sentinel named, database 2
    assert 6 * HOUR_MS - 5000 <= ttl <= 6 * HOUR_MS


def test_the_enforcer_finds_the_master_through_the_sentinel(sentinel_app, master_client, sentinel):
    api_policy("sentinel-api")
    store("api-forever", "api.fetch")
    master_client.persist(meta_key("api-forever"))
    store("api-old", "api.fetch")
    meta = json.loads(master_client.get(meta_key("api-old")))
    meta["date_done"] = "2001-01-01T00:00:00+00:00"
    master_client.set(meta_key("api-old"), json.dumps(meta))

    run_ = run_cleanup(Selection(), Options(backend="redis"))

    assert run_.status == "succeeded", run_.error
    assert not master_client.exists(meta_key("api-old"))
    assert 0 < master_client.pttl(meta_key("api-forever")) <= 6 * HOUR_MS
    assert run_.report["redis"]["server"] == f"sentinel://127.0.0.1:{sentinel[0]}/{DB} (master '{MASTER}')"


def test_an_unknown_master_name_fails_the_redis_part_with_a_clear_message(
    sentinel_app, sentinel, make_result, celery_conf
):
    celery_conf.result_backend_transport_options = {"master_name": "no-such-master"}
    reset_backend()
    make_result(task_id="old-db-row", age=timedelta(days=3))
    with pytest.raises(CleanupFailed) as failure:
        run_cleanup(Selection(), Options(backend="all"))
    message = str(failure.value)
    assert f"sentinel://127.0.0.1:{sentinel[0]}/{DB} (master 'no-such-master')" in message
    assert "No master found for 'no-such-master'" in message
    # The database part ran all the same.
    assert failure.value.run.report["unmatched"]["deleted"] == 1


def test_w006_names_the_sentinel_backend_for_celerys_own_sentinel_url(
    sentinel_app, sentinel, celery_conf
):
    api_policy("sentinel-api")
    celery_conf.result_backend = sentinel_url(sentinel[0])  # Celery's stock SentinelBackend
    reset_backend()
    warnings = [m for m in run_checks(databases=["default"]) if m.id == "retention_admin.W006"]
    assert len(warnings) == 1
    assert "retention_admin.backends.RetentionSentinelBackend+sentinel://" in warnings[0].hint

    celery_conf.result_backend = f"retention_admin.backends.RetentionSentinelBackend+{sentinel_url(sentinel[0])}"
    reset_backend()
    assert not [m for m in run_checks(databases=["default"]) if m.id == "retention_admin.W006"]
