"""RetentionRedisBackend and the enforcer over TLS with a password, on a non-default database.

A private ``redis-server`` is started for this module with TLS only (no plain
port), a certificate signed by a throw-away CA made with the ``openssl`` command,
and ``requirepass``: the URL form a production deployment uses,
``rediss://:PASSWORD@host:port/3?ssl_cert_reqs=required&ssl_ca_certs=...``.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from retention_admin.executor import Options, Selection, run_cleanup

from .redis_servers import api_policy, free_port, meta_key, reset_backend, result_backend, store
from .services import in_ci

PASSWORD = "tls-s3cret-pw"
DB = 3
HOUR_MS = 3600 * 1000

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning"),
]


def _missing(reason: str) -> None:
    if in_ci():
        pytest.fail(f"{reason} (CI needs it for the TLS tests)")
    pytest.skip(reason)


def _make_certificates(directory: Path) -> None:
    """A CA and a server certificate for 127.0.0.1 signed by it."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=retention-test-ca",
            "-keyout", "ca.key", "-out", "ca.crt")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key",
            "-out", "server.csr")
    (directory / "san.ext").write_text("subjectAltName = IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.ext", "-out", "server.crt")


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """(port, CA certificate) of a TLS-only Redis that wants a password."""
    for program in ("redis-server", "openssl"):
        if shutil.which(program) is None:
            _missing(f"{program} is not installed")
    directory = tmp_path_factory.mktemp("redis-tls")
    _make_certificates(directory)
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", "server.crt", "--tls-key-file", "server.key", "--tls-ca-cert-file", "ca.crt",
         "--tls-auth-clients", "no", "--requirepass", PASSWORD, "--save", "", "--appendonly", "no",
         "--dir", str(directory)],
        cwd=directory, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    ca = directory / "ca.crt"
    client = redis.Redis(host="127.0.0.1", port=port, password=PASSWORD, ssl=True, ssl_ca_certs=str(ca),
                         ssl_cert_reqs="required", socket_timeout=2)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if process.poll() is not None or time.monotonic() > deadline:
                    output = process.stdout.read().decode(errors="replace") if process.stdout else ""
                    _missing(f"a TLS redis-server did not start: {output[-500:]}")
                time.sleep(0.1)
        yield port, ca
    finally:
        client.close()
        process.terminate()
        process.wait(timeout=10)


def tls_url(port: int, ca: Path, password: str = PASSWORD) -> str:
    return f"rediss://:{password}@127.0.0.1:{port}/{DB}?ssl_cert_reqs=required&ssl_ca_certs={ca}"


@pytest.fixture
def tls_client(tls_server: tuple[int, Path]) -> Iterator[redis.Redis]:
    port, ca = tls_server
    client = redis.Redis.from_url(tls_url(port, ca))
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def tls_app(
    tls_server: tuple[int, Path], tls_client: redis.Redis, tmp_path: Path, celery_conf: Any
) -> Iterator[Any]:
    port, ca = tls_server
    url = f"retention_admin.backends.RetentionRedisBackend+{tls_url(port, ca)}"
    with result_backend(url, {}, tmp_path, celery_conf) as app_:
        yield app_


def test_results_over_tls_get_their_policys_ttl_on_the_database_of_the_url(tls_app, tls_client):
    api_policy("tls-api")
    store("api-1", "api.fetch")
    store("other-1", "misc.job")

    ttl = tls_client.pttl(meta_key("api-1"))
    assert 6 * HOUR_MS - 5000 <= ttl <= 6 * HOUR_MS
    assert tls_client.pttl(meta_key("other-1")) > 0  # the remainder: result_expires
    # The keys are on database 3 of the TLS server, nowhere else.
    assert tls_client.connection_pool.connection_kwargs["db"] == DB
    assert tls_client.exists(meta_key("api-1"))


def test_the_enforcer_works_over_tls_and_never_shows_the_password(tls_app, tls_client, caplog):
    api_policy("tls-api")
    store("api-forever", "api.fetch")
    tls_client.persist(meta_key("api-forever"))  # written while result_expires was None, say
    store("api-old", "api.fetch")
    # An old result: its date_done years ago, and no TTL.
    meta = json.loads(tls_client.get(meta_key("api-old")))
    meta["date_done"] = "2001-01-01T00:00:00+00:00"
    tls_client.set(meta_key("api-old"), json.dumps(meta))

    caplog.set_level(logging.DEBUG)
    run_ = run_cleanup(Selection(), Options(backend="redis"))

    assert run_.status == "succeeded", run_.error
    assert not tls_client.exists(meta_key("api-old"))  # past due: deleted
    ttl = tls_client.pttl(meta_key("api-forever"))
    assert 0 < ttl <= 6 * HOUR_MS  # given the policy's TTL back
    everything = " ".join([str(run_.report), " ".join(run_.notes), run_.error, caplog.text])
    assert PASSWORD not in everything


def test_a_wrong_password_over_tls_is_named_without_either_password(
    tls_app, tls_server, caplog, celery_conf
):
    from retention_admin.executor import CleanupFailed

    port, ca = tls_server
    celery_conf.result_backend = f"retention_admin.backends.RetentionRedisBackend+{tls_url(port, ca, 'not-the-pw')}"
    reset_backend()
    caplog.set_level(logging.INFO)
    with pytest.raises(CleanupFailed) as failure:
        run_cleanup(Selection(), Options(backend="redis"))
    message = str(failure.value)
    assert f"Redis at rediss://127.0.0.1:{port}/{DB}" in message
    assert "authentication" in message
    for secret in ("not-the-pw", PASSWORD):
        assert secret not in message and secret not in failure.value.run.error and secret not in caplog.text
