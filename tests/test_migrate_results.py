"""``migrate_results``: every result moved between two result backends, verified; and the cut-over backend.

Real servers only: Redis (the database of ``TEST_RETENTION_REDIS_URL``, keys under
a per-process ``global_keyprefix``), the test database, and for the end-to-end
test RabbitMQ and a real Celery worker. Results are read back through Celery's
own ``AsyncResult`` on the plain database backend and compared with what the
Redis backend reads.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import current_app, states
from celery.app.task import Context
from celery.result import AsyncResult, GroupResult
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, connections
from django.test import override_settings
from django.utils import timezone
from django_celery_results.models import GroupResult as GroupResultRow
from django_celery_results.models import TaskResult

from retention_admin.backends import RetentionCutoverBackend, RetentionDatabaseBackend
from retention_admin.models import RetentionHold, RetentionPolicy, RetentionTier
from testproject.celery import app

from .celery_conf import CeleryConf, task_key_prefix
from .test_e2e_beat import celery_processes, start_worker  # noqa: F401 - the fixture

REDIS_URL = os.environ.get("TEST_RETENTION_REDIS_URL", "redis://127.0.0.1:6379/5")
PREFIX = f"ramigr{os.getpid()}:"
# Before "celery-task-meta-": PREFIX, or "ramigr123:_" on Celery 5.3-5.4 (tests/celery_conf.py).
KEY_PREFIX = task_key_prefix(PREFIX)
SOURCE = f"retention_admin.backends.RetentionRedisBackend+{REDIS_URL}"
DESTINATION = "retention_admin.backends.RetentionDatabaseBackend"
ROOT = Path(__file__).resolve().parent.parent
DAY = timedelta(days=1)

pytestmark = [
    pytest.mark.services,
    # Celery's own RedisBackend._set calls SETEX, which redis-py 8 marks deprecated.
    pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning"),
]


def reset_backend() -> None:
    app._backend_cache = None
    app._local.__dict__.pop("backend", None)


def wipe(client: redis.Redis) -> None:
    """This process's keys only: the Redis database is shared with other sessions."""
    keys = list(client.scan_iter(match=f"{PREFIX}*", count=1000))
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start : start + 1000])


@pytest.fixture
def redis_client(redis_server: None) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    wipe(client)
    yield client
    wipe(client)
    client.close()


@pytest.fixture
def on_redis(redis_client: redis.Redis, celery_conf: CeleryConf) -> Iterator[Any]:
    """The project's app storing results in Redis (RetentionRedisBackend), as before a move."""
    previous = current_app._get_current_object()
    app.set_current()
    celery_conf.result_backend = SOURCE
    celery_conf.result_backend_transport_options = {"global_keyprefix": PREFIX}
    reset_backend()
    with override_settings(RETENTION_ADMIN={"REDIS_POLICY_REFRESH_SECONDS": 0}):
        yield app.backend
    celery_conf.restore()
    reset_backend()
    previous.set_current()


def migrate(*args: str) -> dict[str, Any]:
    out = io.StringIO()
    call_command("migrate_results", "--from", SOURCE, "--to", DESTINATION, *args, "--json", "--no-progress", stdout=out)
    return json.loads(out.getvalue())


def store(backend: Any, task_id: str, name: str | None, state: str = states.SUCCESS, result: Any = "ok",
          args: Any = (1,), kwargs: Any = None, traceback: str | None = None) -> None:
    request = Context(task=name, args=list(args), kwargs=kwargs or {}, hostname="worker@test", delivery_info={})
    if state == states.FAILURE:
        result = ValueError(result)
    backend.store_result(task_id, result, state, traceback=traceback, request=request)


def put(client: redis.Redis, task_id: str, *, age: timedelta, status: str = states.SUCCESS, **meta: Any) -> None:
    """A result key as Celery writes it (dated in UTC), done ``age`` ago, with no TTL (as with result_expires=None)."""
    value = {"status": status, "result": "old", "traceback": None, "children": [], "task_id": task_id,
             "date_done": (datetime.now(UTC) - age).isoformat() if status in states.READY_STATES else None,
             "name": "jobs.old", "args": [1], "kwargs": {}, **meta}
    client.set(f"{KEY_PREFIX}celery-task-meta-{task_id}".encode(), app.backend.encode(value))


def populate(backend: Any, client: redis.Redis) -> list[str]:
    """Results of every kind a Redis result store holds; returns their task ids."""
    tier = RetentionTier.objects.get(slug="daily")
    RetentionPolicy.objects.create(name="t-critical", priority=1, tier=tier, task_name_pattern="critical.*", keep_for=None)
    RetentionHold.objects.create(task_id="held-1", reason="incident 7")
    ids = []
    for i in range(12):
        ids.append(f"ok-{i}")
        store(backend, f"ok-{i}", "jobs.resize", result={"n": i, "tags": ["a", "b"], "ratio": i / 7}, args=(i, "x"),
              kwargs={"size": i, "nested": {"k": [1, 2]}})
    for i in range(5):
        ids.append(f"failed-{i}")
        store(backend, f"failed-{i}", "jobs.resize", states.FAILURE, result=f"boom {i}",
              traceback=f"Traceback (most recent call last):\n  File \"x.py\", line {i}\nValueError: boom {i}")
    store(backend, "unicode-☃", "tâches.café ✓", result={"text": "naïve ünïcode ☃ 🚀", "zh": "结果"}, kwargs={"ключ": "значение"})
    store(backend, "critical-1", "critical.ledger", result=[1, 2, 3])  # keep-forever policy: no TTL
    store(backend, "held-1", "jobs.resize", result=None)  # held: no TTL
    store(backend, "no-name", None, result=42)
    ids += ["unicode-☃", "critical-1", "held-1", "no-name"]
    put(client, "old-40d", age=40 * DAY)  # older than any policy keeps: moved all the same
    put(client, "started-1", age=timedelta(0), status=states.STARTED, result={"pid": 1, "hostname": "w"})
    ids += ["old-40d", "started-1"]
    GroupResult("group-1", [AsyncResult("ok-0", app=app), AsyncResult("ok-1", app=app)], app=app).save(backend=backend)
    return ids


def snapshot(client: redis.Redis) -> dict[bytes, tuple[bytes | None, bool]]:
    """Every key of this process: its value and whether it has a TTL."""
    return {k: (client.get(k), client.pttl(k) >= 0) for k in client.scan_iter(match=f"{PREFIX}*")}


def fields(result: AsyncResult) -> dict[str, Any]:
    """What Celery's AsyncResult reads of a result (an exception by type and arguments)."""
    meta = result._get_task_meta()
    value = result.result
    if isinstance(value, BaseException):
        value = (type(value).__name__, value.args)
    done = result.date_done
    if isinstance(done, datetime):
        done = (done if timezone.is_aware(done) else timezone.make_aware(done)).astimezone(UTC)
    return {
        "state": result.state,
        "result": json.loads(json.dumps(value)),  # tuples and lists alike
        "args": json.loads(json.dumps(result.args)),
        "kwargs": result.kwargs,
        "date_done": done if result.state in states.READY_STATES else None,
        "traceback": result.traceback,
        "name": meta.get("name") or meta.get("task_name"),
    }


def assert_same(task_ids: list[str], source: Any, destination: Any) -> None:
    for task_id in task_ids:
        theirs = fields(AsyncResult(task_id, backend=destination, app=app))
        assert theirs["state"] != states.PENDING, f"{task_id} is not in the destination"
        assert theirs == fields(AsyncResult(task_id, backend=source, app=app)), task_id


@pytest.mark.django_db
def test_redis_to_database_moves_every_result_verified_and_idempotent(on_redis, redis_client):
    ids = populate(on_redis, redis_client)
    before = snapshot(redis_client)
    assert any(has_ttl for _v, has_ttl in before.values()) and not all(has_ttl for _v, has_ttl in before.values())

    dry = migrate("--dry-run")
    assert (dry["scanned"], dry["copied"], dry["verified"], dry["checksum_destination"]) == (len(ids), len(ids), 0, None)
    assert dry["groups"]["copied"] == 1 and dry["dry_run"] is True
    assert not TaskResult.objects.exists() and not GroupResultRow.objects.exists()

    report = migrate("--batch-size", "7")
    assert report["scanned"] == report["copied"] == report["verified"] == len(ids), report
    assert (report["already_present"], report["newer_in_destination"], report["mismatches"]) == (0, 0, 0)
    assert report["checksum_source"] == report["checksum_destination"] == dry["checksum_source"]
    assert (report["groups"]["copied"], report["groups"]["verified"]) == (1, 1)
    assert report["source_untouched"] is True and report["unreadable"] == 0
    assert TaskResult.objects.count() == len(ids)

    database = RetentionDatabaseBackend(app=app)
    assert_same(ids, on_redis, database)
    # Keep-forever, held, 40 days old, unfinished: all there as Celery wrote them.
    assert AsyncResult("critical-1", backend=database, app=app).result == [1, 2, 3]
    assert AsyncResult("failed-3", backend=database, app=app).traceback.endswith("ValueError: boom 3")
    assert AsyncResult("unicode-☃", backend=database, app=app).result["text"] == "naïve ünïcode ☃ 🚀"
    assert TaskResult.objects.get(task_id="old-40d").date_done < timezone.now() - 39 * DAY
    assert database.restore_group("group-1").as_tuple() == on_redis.restore_group("group-1").as_tuple()
    assert snapshot(redis_client) == before  # the source is untouched

    again = migrate()
    assert (again["copied"], again["already_present"], again["verified"]) == (0, len(ids), len(ids)), again
    assert again["checksum_source"] == again["checksum_destination"] == report["checksum_source"]
    assert (again["groups"]["copied"], again["groups"]["already_present"]) == (0, 1)
    assert TaskResult.objects.count() == len(ids) and GroupResultRow.objects.count() == 1


@pytest.mark.django_db
def test_text_report_says_the_source_is_untouched_and_how_to_clear_it(on_redis, redis_client):
    store(on_redis, "one", "jobs.resize")
    out = io.StringIO()
    call_command("migrate_results", "--from", SOURCE, "--to", "django-db", "--no-progress", stdout=out)
    text = out.getvalue()
    assert f"Copied results from {REDIS_URL} to database 'default':" in text
    assert "scanned 1, copied 1" in text and "mismatches: 0" in text
    assert "The source is untouched" in text and "FLUSHDB" in text and "TTLs run out" in text


@pytest.mark.django_db
def test_a_newer_result_in_the_destination_is_kept_an_older_one_replaced(on_redis, redis_client):
    store(on_redis, "newer-there", "jobs.resize", result="from redis")
    store(on_redis, "older-there", "jobs.resize", result="from redis")
    for task_id, shift in (("newer-there", DAY), ("older-there", -DAY)):
        row = TaskResult.objects.create(task_id=task_id, status=states.SUCCESS, result='"from the database"',
                                        content_type="application/json", content_encoding="utf-8")
        TaskResult.objects.filter(pk=row.pk).update(date_done=timezone.now() + shift)

    report = migrate()

    assert (report["copied"], report["replaced"], report["newer_in_destination"]) == (1, 1, 1), report
    assert report["verified"] == 1 and report["mismatches"] == 0
    database = RetentionDatabaseBackend(app=app)
    assert AsyncResult("newer-there", backend=database, app=app).result == "from the database"
    assert AsyncResult("older-there", backend=database, app=app).result == "from redis"
    assert TaskResult.objects.filter(task_id="older-there").count() == 1


@pytest.mark.django_db
def test_unreadable_keys_are_reported_not_copied_and_the_exit_is_an_error(on_redis, redis_client):
    store(on_redis, "fine", "jobs.resize")
    redis_client.set(f"{KEY_PREFIX}celery-task-meta-garbage".encode(), b"\x00not a result")
    with pytest.raises(CommandError, match=r"1 source result\(s\) could not be read and were not copied: garbage\."):
        call_command("migrate_results", "--from", SOURCE, "--to", DESTINATION, "--no-progress", stdout=io.StringIO())
    assert list(TaskResult.objects.values_list("task_id", flat=True)) == ["fine"]


@pytest.mark.django_db
def test_a_mismatch_exits_1_and_names_the_result(on_redis, redis_client, monkeypatch):
    store(on_redis, "will-differ", "jobs.resize", result="right")
    from retention_admin import transfer

    real = transfer.insert_records

    def corrupting(records: list[dict[str, Any]], db: str) -> None:
        real([{**r, "result": '"wrong"'} for r in records], db)

    monkeypatch.setattr(transfer, "insert_records", corrupting)
    with pytest.raises(CommandError, match=r"1 result\(s\) differ in the destination: will-differ \(result\)\."):
        call_command("migrate_results", "--from", SOURCE, "--to", DESTINATION, "--no-progress", stdout=io.StringIO())


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", SOURCE, "--to", SOURCE], r"--to '.*' is Redis; migrate_results moves Redis -> database"),
        (["--from", "django-db", "--to", f"redis://{REDIS_URL.split('://')[1]}"], r"is Redis"),
        (["--from", "rpc://", "--to", DESTINATION], r"--from 'rpc://' is neither a Redis nor a database result backend"),
        (["--from", "no.such.Backend", "--to", DESTINATION], r"--from 'no.such.Backend' is not a result backend Celery can load"),
        (["--from", "django-db", "--to", DESTINATION], r"Database -> database needs the destination's alias: --to-database"),
        (["--from", "django-db", "--to", "django-db", "--to-database", "default"], r"the same database \('default'\)"),
        (["--from", SOURCE, "--to", DESTINATION, "--to-database", "default"], r"--to-database is for database -> database"),
        (["--from", SOURCE, "--to", DESTINATION, "--database", "nope"], r"Unknown database alias 'nope'"),
        (["--from", f"retention_admin.backends.RetentionCutoverBackend+{REDIS_URL}", "--to", DESTINATION],
         r"--from names the cut-over backend"),
        (["--from", SOURCE, "--to", DESTINATION, "--batch-size", "0"], r"--batch-size"),
    ],
)
def test_combinations_it_cannot_move_are_refused(args, message, on_redis):
    with pytest.raises(CommandError, match=message):
        call_command("migrate_results", *args, "--no-progress", stdout=io.StringIO())
    assert not TaskResult.objects.exists()


@pytest.fixture
def other_database(tmp_path: Path) -> Iterator[str]:
    """A second database alias (a SQLite file), migrated: the destination of a database -> database move.

    Created as Django's test case allows one it was not told about: a connection
    registered directly, not through DATABASES.
    """
    alias = "migr_dest"
    configured = connections.configure_settings({
        "default": connections.settings["default"],
        alias: {"ENGINE": "django.db.backends.sqlite3", "NAME": str(tmp_path / "dest.sqlite3")},
    })
    connections.settings[alias] = configured[alias]
    connections[alias] = connections.create_connection(alias)
    del connections.settings[alias]
    try:
        call_command("migrate", database=alias, verbosity=0)
        yield alias
    finally:
        connections[alias].close()
        del connections[alias]


@pytest.mark.django_db
def test_database_to_database_copies_every_column(make_result, other_database):
    make_result(task_id="a", status=states.SUCCESS, result='{"n": 1}', age=3 * DAY)
    make_result(task_id="b", status=states.FAILURE, age=DAY,
                result='{"exc_type": "ValueError", "exc_message": ["x"], "exc_module": "builtins"}')
    make_result(task_id="c", status=states.STARTED, result='{"pid": 3}')
    TaskResult.objects.filter(task_id="a").update(task_args='[1, "ü"]', task_kwargs='{"k": 2}', traceback=None, worker="w@h")
    GroupResultRow.objects.create(group_id="g", content_type="application/json", content_encoding="utf-8",
                                  result='[["g", null], [[["a", null], null]]]')
    out = io.StringIO()
    call_command("migrate_results", "--from", "django-db", "--to", DESTINATION, "--to-database", other_database,
                 "--json", "--no-progress", stdout=out)
    report = json.loads(out.getvalue())
    assert (report["copied"], report["verified"], report["mismatches"]) == (3, 3, 0), report
    assert report["checksum_source"] == report["checksum_destination"]
    assert (report["groups"]["copied"], report["groups"]["verified"]) == (1, 1)
    columns = [f.attname for f in TaskResult._meta.concrete_fields if f.attname != "id"]
    ours = {r["task_id"]: r for r in TaskResult.objects.values(*columns)}
    theirs = {r["task_id"]: r for r in TaskResult.objects.using(other_database).values(*columns)}
    assert theirs == ours
    group = GroupResultRow.objects.values("result", "date_done", "date_created").get()
    assert GroupResultRow.objects.using(other_database).values("result", "date_done", "date_created").get() == group


# -- a run killed halfway ---------------------------------------------------------------

CHILD = """
import sys
import django
django.setup()
from django.core.management import call_command
from tests.celery_conf import set_celery_setting
set_celery_setting("result_backend_transport_options", {"global_keyprefix": sys.argv[1]})
call_command("migrate_results", *sys.argv[2:])
"""


def database_url() -> str:
    from .test_e2e_beat import database_url as url

    return url()


def child(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """migrate_results in a process of its own, on the test database and this process's keys."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "testproject.settings", "DATABASE_URL": database_url(), **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, PREFIX, "--from", SOURCE, "--to", DESTINATION, "--json", "--no-progress", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def put_many(client: redis.Redis, count: int, prefix: str = "bulk") -> list[str]:
    ids = [f"{prefix}-{i:06d}" for i in range(count)]
    now = datetime.now(UTC)  # as Celery dates results, whatever USE_TZ says
    with client.pipeline(transaction=False) as pipe:
        for i, task_id in enumerate(ids):
            meta = {"status": states.FAILURE if i % 10 == 0 else states.SUCCESS, "result": {"i": i, "s": "ü" * (i % 7)},
                    "traceback": "Traceback: boom" if i % 10 == 0 else None, "children": [], "task_id": task_id,
                    "date_done": (now - timedelta(seconds=i)).isoformat(), "name": f"jobs.kind{i % 5}",
                    "args": [i], "kwargs": {"k": i}}
            if i % 10 == 0:
                meta["result"] = {"exc_type": "ValueError", "exc_message": [f"boom {i}"], "exc_module": "builtins"}
            pipe.set(f"{KEY_PREFIX}celery-task-meta-{task_id}".encode(), json.dumps(meta), ex=None if i % 2 else 86400)
        pipe.execute()
    return ids


postgresql_only = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason=f"needs a database other processes see: PostgreSQL (this run uses {connection.vendor})",
)


@postgresql_only
@pytest.mark.django_db(transaction=True)
def test_a_run_killed_halfway_is_finished_by_the_next_with_the_same_totals(on_redis, redis_client):
    count = 20_000
    ids = put_many(redis_client, count)
    dry = migrate("--dry-run")
    assert dry["copied"] == count

    process = child("--batch-size", "50")
    deadline = time.monotonic() + 60
    while TaskResult.objects.count() < 2000:
        assert process.poll() is None, f"finished before it could be killed: {process.communicate()}"
        assert time.monotonic() < deadline, "no progress in 60 s"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL
    done_before = TaskResult.objects.count()
    assert 0 < done_before < count, done_before

    report = migrate("--batch-size", "500")

    assert report["scanned"] == report["verified"] == count and report["mismatches"] == 0, report
    # The server may still commit the killed process's last batch after it died: at least what was counted.
    assert report["copied"] + report["already_present"] == count and report["already_present"] >= done_before
    assert report["checksum_source"] == report["checksum_destination"] == dry["checksum_source"]
    assert TaskResult.objects.count() == count
    assert set(TaskResult.objects.values_list("task_id", flat=True)) == set(ids)


# -- the cut-over, end to end with a real worker ------------------------------------------


@postgresql_only
@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_cutover_worker_writes_while_the_move_runs_and_nothing_is_stranded(on_redis, redis_client, request):
    from kombu import Connection

    from testproject.tasks import add, fail

    from .services import AMQP_URL

    processes = request.getfixturevalue("celery_processes")
    # Before the switch: results in Redis, some of every kind.
    before_ids = populate(on_redis, redis_client) + put_many(redis_client, 3000, prefix="pre")
    rerun = ["ok-3", "pre-000007"]  # run again by the worker after the switch: its newer result wins
    redis_before = snapshot(redis_client)

    # The switch: the worker writes to the database and reads the database, then Redis.
    cutover = f"retention_admin.backends.RetentionCutoverBackend+{REDIS_URL}"
    processes.env["CELERY_RESULT_BACKEND"] = cutover
    start_worker(processes)
    reader = RetentionCutoverBackend(app=app, url=REDIS_URL)
    assert AsyncResult("ok-5", backend=reader, app=app).result == {"n": 5, "tags": ["a", "b"], "ratio": 5 / 7}

    move = child("--batch-size", "50")
    processes.wait_for("the move to start copying", lambda: TaskResult.objects.exists() or move.poll() is not None)
    with Connection(AMQP_URL, connect_timeout=5) as conn:
        during = [add.apply_async((i, i), connection=conn, queue=processes.queue).id for i in range(20)]
        during += [fail.apply_async((f"boom {i}",), connection=conn, queue=processes.queue).id for i in range(5)]
        for task_id in rerun:
            add.apply_async((100, 1), task_id=task_id, connection=conn, queue=processes.queue)
    out, err = move.communicate(timeout=60)
    moved_at = timezone.now()
    assert move.returncode == 0, err
    report = json.loads(out)
    assert report["mismatches"] == 0 and report["scanned"] == len(before_ids), report
    assert report["verified"] + report["newer_in_destination"] == len(before_ids)

    done = (states.SUCCESS, states.FAILURE)
    processes.wait_for(
        "the worker to store every result",
        lambda: TaskResult.objects.filter(task_id__in=during + rerun, status__in=done).count() == len(during) + 2,
    )
    processes.wait_for("the reruns", lambda: TaskResult.objects.filter(task_id__in=rerun, result="101").count() == 2)
    assert TaskResult.objects.filter(task_id__in=during, date_done__lt=moved_at).exists(), (
        "the worker stored nothing while the move ran; make the move slower")
    # Everything, stored before the switch or during the move, reads from the database alone.
    database = RetentionDatabaseBackend(app=app)
    assert_same([i for i in before_ids if i not in rerun], on_redis, database)
    for task_id in rerun:
        assert AsyncResult(task_id, backend=database, app=app).result == 101
    for i, task_id in enumerate(during[:20]):
        assert AsyncResult(task_id, backend=database, app=app).result == 2 * i
    for task_id in during[20:]:
        assert AsyncResult(task_id, backend=database, app=app).state == states.FAILURE
    # Never written to Redis (the worker has no key prefix: look under both names).
    assert not redis_client.exists(*[f"{p}celery-task-meta-{t}" for t in during for p in (KEY_PREFIX, "")])
    assert snapshot(redis_client) == redis_before  # the old store is untouched


# -- the cut-over backend, in this process ------------------------------------------------


@pytest.mark.django_db
def test_cutover_backend_writes_the_database_and_reads_it_then_redis(on_redis, redis_client):
    store(on_redis, "only-in-redis", "jobs.resize", result="from redis")
    store(on_redis, "in-both", "jobs.resize", result="old, in redis")
    cutover = RetentionCutoverBackend(app=app, url=SOURCE)  # the old setting, whole, after the +
    store(cutover, "in-both", "jobs.resize", result="new, in the database")
    store(cutover, "only-in-db", "jobs.resize", result="after the switch")

    assert not redis_client.exists(f"{KEY_PREFIX}celery-task-meta-only-in-db")  # written to the database only
    assert TaskResult.objects.filter(task_id__in=["in-both", "only-in-db"]).count() == 2
    read = {t: AsyncResult(t, backend=cutover, app=app).result for t in ("only-in-redis", "in-both", "only-in-db")}
    assert read == {"only-in-redis": "from redis", "in-both": "new, in the database", "only-in-db": "after the switch"}
    assert AsyncResult("nowhere", backend=cutover, app=app).state == states.PENDING

    GroupResult("old-group", [AsyncResult("only-in-redis", app=app)], app=app).save(backend=on_redis)
    assert cutover.restore_group("old-group").as_tuple() == on_redis.restore_group("old-group").as_tuple()

    AsyncResult("in-both", backend=cutover, app=app).forget()  # forgotten in both: not read back from Redis
    assert AsyncResult("in-both", backend=cutover, app=app).state == states.PENDING
    assert cutover.as_uri() == f"django-db, then {REDIS_URL}"


@pytest.mark.django_db
def test_cutover_backend_answers_from_the_database_when_redis_is_gone(on_redis, caplog):
    cutover = RetentionCutoverBackend(app=app, url="redis://127.0.0.1:1/0")  # nothing listens there
    store(cutover, "stored", "jobs.resize", result=7)
    assert AsyncResult("stored", backend=cutover, app=app).result == 7
    assert AsyncResult("unknown", backend=cutover, app=app).state == states.PENDING
    assert "did not answer" in caplog.text


def test_cutover_backend_needs_the_redis_store_it_reads_from():
    from celery.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match=r"needs the Redis store it reads from after a '\+'"):
        RetentionCutoverBackend(app=app)
    with pytest.raises(ImproperlyConfigured, match="is not a Redis backend"):
        RetentionCutoverBackend(app=app, url="rpc://")


@pytest.mark.django_db
def test_a_chord_applied_before_the_switch_completes_through_redis(on_redis, redis_client):
    from testproject.tasks import add

    queue = f"migr-chord-{uuid.uuid4().hex[:8]}"
    group_id = f"chord-{uuid.uuid4().hex[:8]}"
    on_redis.set_chord_size(group_id, 2)  # what applying the chord did, while results went to Redis
    cutover = RetentionCutoverBackend(app=app, url=REDIS_URL)
    body = add.s(1).set(queue=queue)
    for index, task_id in enumerate(["part-1", "part-2"]):
        part = Context(id=task_id, group=group_id, group_index=index, chord=body, delivery_info={})
        store(cutover, task_id, "testproject.tasks.add", result=index + 10)
        cutover.on_chord_part_return(part, states.SUCCESS, index + 10)

    with app.connection_for_read() as conn:
        message = conn.SimpleQueue(queue).get(timeout=5)  # the body was sent, with both parts' results
    assert message.headers["task"] == "testproject.tasks.add"
    assert message.payload[0] == [[10, 11], 1]
    assert not redis_client.exists(f"{KEY_PREFIX}celery-taskset-meta-{group_id}.s")  # Redis finished the chord


@pytest.mark.django_db
def test_the_cutover_backend_named_as_destination_means_its_database(on_redis, redis_client):
    store(on_redis, "a", "jobs.resize")
    out = io.StringIO()
    call_command("migrate_results", "--from", SOURCE, "--to", f"retention_admin.backends.RetentionCutoverBackend+{SOURCE}",
                 "--json", "--no-progress", stdout=out)
    report = json.loads(out.getvalue())
    assert (report["copied"], report["verified"], report["destination"]) == (1, 1, "database 'default'")
