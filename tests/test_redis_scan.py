"""The Redis enforcer (SCAN, never KEYS), Redis archives and their restore, failures, figures.

Against the real Redis server; TTLs asserted with PTTL, the commands sent watched
with MONITOR.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
import redis
from celery import states
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings
from django.utils import timezone
from django_celery_results.models import TaskResult

from retention_admin import archive, redis_scan
from retention_admin.executor import CleanupFailed, Options, Selection, run_cleanup
from retention_admin.models import ArchiveBatch, CleanupRun, RetentionHold
from retention_admin.restore import restore_batches
from testproject.celery import app

from .test_redis_backend import (  # noqa: F401 - fixtures
    KEY_PREFIX,
    PREFIX,
    REDIS_URL,
    key,
    policy,
    redis_app,
    redis_client,
    reset_backend,
)

DAY = timedelta(days=1)
HOUR_MS = 3600 * 1000
pytestmark = [
    pytest.mark.django_db,
    pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning"),
]


def put(
    client: redis.Redis,
    task_id: str,
    name: str | None = "jobs.resize",
    *,
    status: str = states.SUCCESS,
    age: timedelta = timedelta(0),
    ttl_ms: int | None = None,
    result: Any = "ok",
) -> bytes:
    """A result key as Celery writes it (extended meta), done ``age`` ago, with a TTL or none."""
    meta = {
        "status": status,
        "result": result,
        "traceback": "Traceback: boom" if status == states.FAILURE else None,
        "children": [],
        "date_done": (timezone.now() - age).isoformat(),
        "name": name,
        "args": [1, 2],
        "kwargs": {"k": "v"},
        "worker": "worker@test",
        "retries": 0,
        "queue": "celery",
        "task_id": task_id,
    }
    value = app.backend.encode(meta)
    client.set(key(task_id), value, px=ttl_ms)
    return value if isinstance(value, bytes) else value.encode()


def cleanup(*args: str) -> dict[str, Any]:
    out = io.StringIO()
    call_command("cleanup_results", *args, "--json", "--no-progress", stdout=out)
    return json.loads(out.getvalue())


def by_name(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in report["redis"]["policies"] if p["name"] == name)


def test_enforcer_fixes_ttls_deletes_due_keys_and_respects_holds(redis_app, redis_client):
    policy("t-api", priority=1, task_name_pattern="api.*", keep_for=timedelta(hours=6))
    policy("t-critical", priority=2, task_name_pattern="critical.*", keep_for=None)
    put(redis_client, "api-fresh", "api.fetch", age=timedelta(hours=1))  # no TTL
    put(redis_client, "api-long", "api.fetch", age=timedelta(hours=1), ttl_ms=30 * 24 * HOUR_MS)
    put(redis_client, "api-right", "api.fetch", age=timedelta(hours=1), ttl_ms=5 * HOUR_MS)
    put(redis_client, "api-due", "api.fetch", age=timedelta(hours=7))
    put(redis_client, "api-held", "api.fetch", age=timedelta(hours=7), ttl_ms=HOUR_MS)
    put(redis_client, "critical", "critical.ledger", age=40 * DAY, ttl_ms=HOUR_MS)
    put(redis_client, "failed", "jobs.resize", status=states.FAILURE, age=8 * DAY)
    put(redis_client, "job-old", "jobs.resize", age=2 * DAY)  # remainder: result_expires 1 day
    put(redis_client, "job-new", "jobs.resize", age=timedelta(hours=2))
    redis_client.set(key("garbage"), b"\x00not a result")
    RetentionHold.objects.create(task_id="api-held", reason="incident")

    report = cleanup("--backend", "redis")
    assert report["status"] == "succeeded"
    api = by_name(report, "t-api")
    assert (api["matched"], api["deleted"], api["ttl_wrong"], api["ttl_fixed"]) == (1, 1, 3, 3)
    assert by_name(report, "failures-7d")["deleted"] == 1
    assert by_name(report, "t-critical")["ttl_fixed"] == 1
    assert report["redis"]["unmatched"]["deleted"] == 1
    assert report["redis"]["unreadable"] == 1
    assert report["redis"]["held"] == 1
    assert report["redis"]["server"] == REDIS_URL
    assert report["totals"]["deleted"] == 3
    left = {k.decode().rsplit("-meta-", 1)[1] for k in redis_client.scan_iter(match=f"{PREFIX}*")}
    assert left == {"api-fresh", "api-long", "api-right", "api-held", "critical", "job-new", "garbage"}
    # Expiry = date_done + keep_for (6 h - 1 h = 5 h left).
    for task_id in ("api-fresh", "api-long", "api-right"):
        assert 5 * HOUR_MS - 10_000 <= redis_client.pttl(key(task_id)) <= 5 * HOUR_MS
    assert redis_client.pttl(key("api-held")) == -1
    assert redis_client.pttl(key("critical")) == -1
    assert 22 * HOUR_MS - 10_000 <= redis_client.pttl(key("job-new")) <= 22 * HOUR_MS
    assert redis_client.pttl(key("garbage")) == -1  # unreadable: left alone
    # A second pass finds nothing to do.
    again = cleanup("--backend", "redis")
    assert again["redis"]["totals"]["ttl_wrong"] == 0 and again["redis"]["totals"]["matched"] == 0


def test_dry_run_changes_nothing_and_reports_counts(redis_app, redis_client):
    put(redis_client, "failed", "jobs.resize", status=states.FAILURE, age=8 * DAY)
    put(redis_client, "fresh", "jobs.resize")
    before = {k: (redis_client.get(k), redis_client.pttl(k)) for k in redis_client.scan_iter(match=f"{PREFIX}*")}
    report = cleanup("--backend", "redis", "--dry-run")
    assert report["dry_run"] is True
    assert by_name(report, "failures-7d")["matched"] == 1
    assert report["redis"]["unmatched"]["ttl_wrong"] == 1
    assert report["redis"]["totals"]["deleted"] == report["redis"]["totals"]["ttl_fixed"] == 0
    after = {k: (redis_client.get(k), redis_client.pttl(k)) for k in redis_client.scan_iter(match=f"{PREFIX}*")}
    assert after == before


def test_only_scan_is_used_never_keys(redis_app, redis_client):
    for n in range(50):
        put(redis_client, f"job-{n}", "jobs.resize", age=2 * DAY)
    monitor_client = redis.Redis.from_url(REDIS_URL)
    seen: list[dict[str, Any]] = []
    ready = threading.Event()
    stop = threading.Event()

    def watch() -> None:
        with monitor_client.monitor() as monitor:
            ready.set()
            for command in monitor.listen():
                seen.append(command)
                if stop.is_set() and "retention-monitor-stop" in command["command"]:
                    return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    ready.wait(5)
    time.sleep(0.2)
    report = cleanup("--backend", "redis")
    stop.set()
    redis_client.echo("retention-monitor-stop")
    watcher.join(10)
    assert report["redis"]["unmatched"]["deleted"] == 50
    # Other sessions share the server: look at the commands sent to this test's database.
    db = int(REDIS_URL.rsplit("/", 1)[1])
    ours = [c["command"] for c in seen if c["db"] == db]
    assert any(c.startswith("SCAN ") and f"MATCH {KEY_PREFIX}celery-task-meta-*" in c for c in ours)
    assert not [c for c in ours if c.upper().startswith("KEYS ")]
    assert any(c.startswith("EVALSHA ") for c in ours)


def test_global_keyprefix_is_honoured(redis_app, redis_client):
    bare = b"celery-task-meta-" + PREFIX.encode() + b"unprefixed"
    redis_client.set(bare, redis_client.get(key("x")) or b'{"status": "SUCCESS"}')
    try:
        put(redis_client, "prefixed", "jobs.resize", age=2 * DAY)
        report = cleanup("--backend", "redis")
        assert report["redis"]["unmatched"]["deleted"] == 1
        assert redis_client.exists(bare) and redis_client.pttl(bare) == -1
    finally:
        redis_client.delete(bare)


def test_days_deletes_sooner_but_sets_no_ttl_from_it(redis_app, redis_client):
    policy("t-api", priority=1, task_name_pattern="api.*", keep_for=30 * DAY)
    put(redis_client, "api-3d", "api.fetch", age=3 * DAY, ttl_ms=27 * 24 * HOUR_MS)
    put(redis_client, "api-1h", "api.fetch", age=timedelta(hours=1))
    report = cleanup("--backend", "redis", "--days", "2", "--policy", "t-api")
    assert by_name(report, "t-api")["deleted"] == 1
    assert report["redis"]["unmatched"] is None  # --policy: no remainder
    assert not redis_client.exists(key("api-3d"))
    # Its TTL follows the policy (30 days from done), not --days.
    assert 30 * 24 * HOUR_MS - 3_700_000 <= redis_client.pttl(key("api-1h")) <= 30 * 24 * HOUR_MS - 3_500_000


def test_a_key_stored_again_after_it_was_read_is_left_alone(redis_app, redis_client):
    old = put(redis_client, "rerun", "jobs.resize", age=2 * DAY)
    import hashlib

    sha = hashlib.sha1(old).hexdigest()
    put(redis_client, "rerun", "jobs.resize")  # re-run: a new value
    enforcer = redis_scan.Enforcer(
        app.backend, redis_scan.Governance([]), rules=[], remainder=True, now=timezone.now()
    )
    enforcer.client = redis_scan.connect(app.backend)
    enforcer.script = enforcer.client.register_script(redis_scan.MUTATE_LUA)
    assert enforcer._mutate([(key("rerun"), sha, "D", 0)]) == [0]
    assert redis_client.exists(key("rerun"))
    current = hashlib.sha1(redis_client.get(key("rerun"))).hexdigest()
    assert enforcer._mutate([(key("rerun"), current, "D", 0)]) == [1]


def test_an_archived_key_held_after_it_was_judged_is_not_deleted(redis_app, redis_client):
    """Archived keys go when their batch is durable, possibly minutes after they were
    judged: a hold placed in between keeps the key (it is in the archive too)."""
    import hashlib

    held = put(redis_client, "held-later", "audit.login", age=40 * DAY)
    free = put(redis_client, "free", "audit.login", age=40 * DAY)
    enforcer = redis_scan.Enforcer(
        app.backend, redis_scan.Governance([]), rules=[], remainder=True, now=timezone.now()
    )
    enforcer.client = redis_scan.connect(app.backend)
    enforcer.script = enforcer.client.register_script(redis_scan.MUTATE_LUA)
    RetentionHold.objects.create(task_id="held-later", reason="legal")
    items = [(key("held-later"), hashlib.sha1(held).hexdigest()), (key("free"), hashlib.sha1(free).hexdigest())]
    assert enforcer._delete_unchanged(items) == 1
    assert redis_client.exists(key("held-later")) and not redis_client.exists(key("free"))


def test_archive_policy_archives_then_deletes_and_restore_brings_them_into_the_database(redis_app, redis_client):
    policy("t-audit", priority=1, task_name_pattern="audit.*", keep_for=30 * DAY, archive=True)
    put(redis_client, "audit-old", "audit.login", age=40 * DAY, result={"user": "zoë"})
    put(redis_client, "audit-failed", "audit.login", status=states.FAILURE, age=31 * DAY,
        result={"exc_type": "ValueError", "exc_message": ["boom"], "exc_module": "builtins"})
    put(redis_client, "audit-new", "audit.login", age=DAY, ttl_ms=HOUR_MS)
    report = cleanup("--backend", "redis", "--tier", "daily")
    audit = by_name(report, "t-audit")
    assert (audit["matched"], audit["archived"], audit["deleted"]) == (2, 2, 2)
    assert not redis_client.exists(key("audit-old")) and not redis_client.exists(key("audit-failed"))
    assert redis_client.pttl(key("audit-new")) == -1  # archive policies keep no TTL
    batch = ArchiveBatch.objects.get(source=ArchiveBatch.Source.REDIS)
    assert (batch.status, batch.records, batch.deleted, batch.policy_name) == ("complete", 2, 2, "t-audit")
    assert archive.verify_batch(batch).ok
    records = {r["task_id"]: r for r in archive.read_records(batch)}
    assert set(records) == {"audit-old", "audit-failed"}
    old = records["audit-old"]
    assert old["source"] == "redis" and old["policy"] == "t-audit"
    assert old["task_name"] == "audit.login" and old["status"] == "SUCCESS"
    assert json.loads(old["result"]) == {"user": "zoë"}
    assert {f.attname for f in archive.TASK_RESULT_FIELDS} <= set(old)

    restored = restore_batches([batch.pk]).as_dict()
    assert restored["totals"]["restored"] == 2
    row = TaskResult.objects.get(task_id="audit-old")
    assert (row.task_name, row.status, row.worker) == ("audit.login", "SUCCESS", "worker@test")
    assert json.loads(row.result) == {"user": "zoë"}
    assert json.loads(row.task_args) == [1, 2] and json.loads(row.task_kwargs) == {"k": "v"}
    assert abs((timezone.now() - 40 * DAY) - row.date_done) < timedelta(minutes=1)
    failed = TaskResult.objects.get(task_id="audit-failed")
    assert failed.traceback == "Traceback: boom" and "ValueError" in failed.result


def test_archive_dry_run_archives_nothing(redis_app, redis_client):
    policy("t-audit", priority=1, task_name_pattern="audit.*", keep_for=30 * DAY, archive=True)
    put(redis_client, "audit-old", "audit.login", age=40 * DAY)
    report = cleanup("--backend", "redis", "--dry-run")
    assert by_name(report, "t-audit")["matched"] == 1
    assert redis_client.exists(key("audit-old"))
    assert not ArchiveBatch.objects.exists()


def test_an_interrupted_redis_batch_is_finished_by_the_next_run(redis_app, redis_client):
    rule_policy = policy("t-audit", priority=1, task_name_pattern="audit.*", keep_for=30 * DAY, archive=True)
    put(redis_client, "audit-a", "audit.login", age=40 * DAY)
    put(redis_client, "audit-b", "audit.login", age=40 * DAY)
    # A run that wrote its batch and died before deleting: one key re-ran since.
    writer = archive.ArchiveWriter(
        archive.configured_location(), policy=rule_policy, policy_name="t-audit", run=None,
        source=ArchiveBatch.Source.REDIS,
    )
    for task_id in ("audit-a", "audit-b"):
        meta = app.backend.decode(redis_client.get(key(task_id)))
        writer.add(redis_scan.record_from_meta(app.backend, meta, policy="t-audit"))
    batch = writer.finish()
    put(redis_client, "audit-b", "audit.login")  # stored again, now fresh
    report = cleanup("--backend", "redis", "--policy", "t-audit")
    batch.refresh_from_db()
    assert (batch.status, batch.deleted) == ("complete", 1)
    assert not redis_client.exists(key("audit-a"))
    assert redis_client.exists(key("audit-b"))
    assert by_name(report, "t-audit")["deleted"] == 1


def test_redis_down_the_database_part_completes_and_the_run_fails(
    redis_app, make_result, caplog, celery_conf
):
    make_result(task_id="db-failed", status="FAILURE", age=8 * DAY)
    celery_conf.result_backend = (
        "retention_admin.backends.RetentionRedisBackend+redis://:s3cret-pw@127.0.0.1:6399/10"
    )
    reset_backend()
    caplog.set_level(logging.INFO)
    with pytest.raises(CommandError) as failure:
        cleanup()
    message = str(failure.value)
    assert "Redis at redis://127.0.0.1:6399/10 is not reachable" in message
    assert "s3cret-pw" not in message
    assert not TaskResult.objects.filter(task_id="db-failed").exists()  # the database part ran
    run = CleanupRun.objects.latest("id")
    assert run.status == "failed" and "127.0.0.1:6399" in run.error and "s3cret-pw" not in run.error
    assert run.report["redis"]["error"].startswith("Redis at redis://127.0.0.1:6399/10")
    assert run.report["totals"]["deleted"] == 1
    assert "s3cret-pw" not in caplog.text


def test_redis_refusing_auth_is_named_without_the_password(
    redis_app, redis_client, caplog, celery_conf
):
    # No such ACL user: the server answers WRONGPASS (no server configuration is changed).
    celery_conf.result_backend = (
        "retention_admin.backends.RetentionRedisBackend+redis://ratest-nobody:s3cret-pw@127.0.0.1:6379/10"
    )
    reset_backend()
    caplog.set_level(logging.INFO)
    with pytest.raises(CleanupFailed) as failure:
        run_cleanup(Selection(), Options(backend="redis"))
    assert "Redis at redis://127.0.0.1:6379/10 refused authentication" in str(failure.value)
    assert "s3cret-pw" not in str(failure.value)
    assert "s3cret-pw" not in failure.value.run.error and "s3cret-pw" not in caplog.text


def test_backend_redis_is_refused_when_redis_is_not_the_result_backend(db):
    with pytest.raises(CommandError, match="--backend redis: no Redis result backend is configured"):
        cleanup("--backend", "redis")


def test_tier_task_runs_the_redis_part_for_its_policies(redis_app, redis_client):
    from retention_admin.tasks import run_tier

    policy("t-api", priority=1, task_name_pattern="api.*", keep_for=timedelta(hours=6))
    put(redis_client, "api-due", "api.fetch", age=timedelta(hours=7))
    put(redis_client, "job-old", "jobs.resize", age=2 * DAY)  # remainder: not the tier's
    with override_settings(RETENTION_ADMIN={"FAN_OUT": False}):
        report = run_tier("daily")
    assert by_name(report, "t-api")["deleted"] == 1
    assert report["redis"]["unmatched"] is None
    assert not redis_client.exists(key("api-due"))
    assert redis_client.exists(key("job-old"))


def test_backend_cleanup_gives_the_remainder_result_expires(redis_app, redis_client):
    put(redis_client, "job-new", "jobs.resize", age=timedelta(hours=2))
    put(redis_client, "job-old", "jobs.resize", age=2 * DAY)
    app.backend.cleanup()  # what celery.backend_cleanup calls
    assert not redis_client.exists(key("job-old"))
    assert 22 * HOUR_MS - 10_000 <= redis_client.pttl(key("job-new")) <= 22 * HOUR_MS
    assert CleanupRun.objects.latest("id").trigger == CleanupRun.Trigger.BACKEND_CLEANUP


def test_figures_count_keys_by_kind_and_keys_without_ttl(redis_app, redis_client):
    put(redis_client, "a", ttl_ms=HOUR_MS)
    put(redis_client, "b")
    redis_client.set(f"{KEY_PREFIX}celery-taskset-meta-g1", b"x")
    redis_client.set(f"{KEY_PREFIX}chord-unlock-g1", b"1", ex=60)
    figures = redis_scan.redis_figures(timeout=2.0)
    assert figures is not None and figures["error"] is None
    assert figures["used_memory"] > 0
    if not figures["estimated"]:
        assert figures["keys"]["task"] == 2 and figures["keys"]["group"] == 1 and figures["keys"]["chord"] == 1
        assert figures["keys_without_ttl"] == 2


def test_figures_extrapolate_beyond_the_key_budget(redis_app, redis_client, monkeypatch):
    pipe = redis_client.pipeline(transaction=False)
    for n in range(3000):
        pipe.set(f"{KEY_PREFIX}celery-task-meta-{n}", b"x")
    pipe.execute()
    monkeypatch.setattr(redis_scan, "FIGURES_KEY_BUDGET", 500)
    figures = redis_scan.redis_figures(timeout=2.0)
    assert figures["estimated"] is True
    assert figures["keys"]["task"] > 0


def test_figures_are_none_without_redis_and_bounded_when_redis_is_down(redis_app, celery_conf):
    celery_conf.result_backend = "retention_admin.backends.RetentionDatabaseBackend"
    reset_backend()
    assert redis_scan.redis_figures() is None
    # A server that accepts connections and never answers: the figures give up in time.
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        port = silent.getsockname()[1]
        celery_conf.result_backend = f"retention_admin.backends.RetentionRedisBackend+redis://:pw@127.0.0.1:{port}/10"
        reset_backend()
        started = time.monotonic()
        figures = redis_scan.redis_figures(timeout=0.5)
        assert time.monotonic() - started < 1.0
        assert figures["used_memory"] is None and figures["error"]
        assert f"127.0.0.1:{port}" in figures["error"] and ":pw@" not in figures["error"]
    finally:
        silent.close()


def test_a_right_ttl_is_left_alone_however_long_the_scan_has_been_running(redis_app, redis_client):
    from retention_admin.matching import Governance

    # Stored an hour ago with Celery's 1-day TTL: 23 hours left, as the remainder wants.
    put(redis_client, "job", "jobs.resize", age=timedelta(hours=1), ttl_ms=23 * HOUR_MS)
    governance = Governance.load()
    # A run that started ten minutes before it reached this key.
    enforcer = redis_scan.Enforcer(
        app.backend, governance, rules=governance.rules, remainder=True,
        now=timezone.now() - timedelta(minutes=10),
    )
    report = enforcer.run()
    assert report["totals"]["ttl_wrong"] == 0 and report["scanned"] == 1


def test_fanned_out_tier_scans_redis_once_and_leaves_the_database_to_its_policy_tasks(redis_app, redis_client):
    from retention_admin.tasks import run_tier

    from .test_scheduler_backend_tasks import drain

    if not app.conf.broker_url.startswith("memory://"):
        pytest.skip("reads the in-memory broker's queue")
    put(redis_client, "failed", "jobs.resize", status=states.FAILURE, age=8 * DAY)
    drain(app.conf.task_default_queue)
    report = run_tier.apply(args=["daily"]).get()
    sent = drain(app.conf.task_default_queue)
    assert [(task, args) for task, args, _kw in sent] == [("retention_admin.tasks.run_policy", ("failures-7d",))]
    assert sent[0][2]["backend"] == "database"
    assert by_name(report["redis"], "failures-7d")["deleted"] == 1
    redis_run = CleanupRun.objects.get(pk=report["redis"]["run"])
    assert redis_run.parent_id == report["run"]
    assert not redis_client.exists(key("failed"))


def test_a_change_is_not_made_to_a_key_stored_again_between_read_and_change(redis_app, redis_client):
    # The scan's changes compare the value they judged; the change is sent before
    # its reply is read, and a value stored again meanwhile must be left alone.
    old = put(redis_client, "rerun", "jobs.resize", age=2 * DAY)
    kept = put(redis_client, "kept", "jobs.resize", age=2 * DAY)
    enforcer = redis_scan.Enforcer(
        app.backend, redis_scan.Governance([]), rules=[], remainder=True, now=timezone.now()
    )
    enforcer.client = redis_scan.connect(app.backend)
    enforcer.changer = enforcer.client.register_script(redis_scan.CHANGE_LUA)
    enforcer.client.script_load(redis_scan.CHANGE_LUA)
    later = int((timezone.now() + DAY).timestamp() * 1000)
    enforcer._change(key("rerun"), old, "D", enforcer.unmatched)
    enforcer._change(key("kept"), kept, later, enforcer.unmatched, ttl=True)
    put(redis_client, "rerun", "jobs.resize")  # re-run: a new value, no TTL
    put(redis_client, "kept", "jobs.resize", ttl_ms=HOUR_MS)
    enforcer._flush_changes()
    enforcer._collect_changes()
    assert redis_client.exists(key("rerun")) and redis_client.exists(key("kept"))
    assert 0 < redis_client.pttl(key("kept")) <= HOUR_MS  # its own TTL, not the stale one
    assert (enforcer.unmatched.deleted, enforcer.unmatched.ttl_fixed) == (0, 0)
    # The value as it is now is changed.
    current = redis_client.get(key("rerun"))
    enforcer._change(key("rerun"), current, "D", enforcer.unmatched)
    enforcer._flush_changes()
    enforcer._collect_changes()
    assert not redis_client.exists(key("rerun")) and enforcer.unmatched.deleted == 1
    enforcer.client.close()


def test_changes_are_sent_again_when_the_script_cache_was_flushed(redis_app, redis_client):
    value = put(redis_client, "old", "jobs.resize", age=2 * DAY)
    enforcer = redis_scan.Enforcer(
        app.backend, redis_scan.Governance([]), rules=[], remainder=True, now=timezone.now()
    )
    enforcer.client = redis_scan.connect(app.backend)
    enforcer.changer = enforcer.client.register_script(redis_scan.CHANGE_LUA)
    # A script Redis does not know (as after SCRIPT FLUSH, which would disturb the
    # other sessions on this server): EVALSHA answers NOSCRIPT and nothing was done.
    enforcer.changer.sha = "0" * 40
    enforcer._change(key("old"), value, "D", enforcer.unmatched)
    try:
        enforcer._flush_changes()
        enforcer._collect_changes()
    finally:
        enforcer.change_connection.disconnect()
        enforcer.client.close()
    assert not redis_client.exists(key("old")) and enforcer.unmatched.deleted == 1
    assert enforcer.changer.sha == redis_scan.hashlib.sha1(redis_scan.CHANGE_LUA.encode()).hexdigest()


def test_many_keys_are_read_ahead_and_all_judged_once(redis_app, redis_client, monkeypatch):
    # Small batches: several SCAN batches, several reads each, the read-ahead queue full.
    monkeypatch.setattr(redis_scan, "READ_KEYS", 7)
    monkeypatch.setattr(redis_scan, "MUTATE_KEYS", 5)
    pipe = redis_client.pipeline(transaction=False)
    for n in range(300):
        meta = {"status": "SUCCESS", "result": n, "traceback": None, "children": [],
                "date_done": (timezone.now() - (2 * DAY if n % 2 else timedelta(hours=1))).isoformat(),
                "name": "jobs.resize", "task_id": f"many-{n}"}
        pipe.set(key(f"many-{n}"), json.dumps(meta))
    pipe.rpush(key("a-list"), b"not a string")  # another type under the prefix: skipped
    pipe.execute()
    reads: list[Any] = []

    class Recorded(redis_scan._ReadAhead):
        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            reads.append(self)

    monkeypatch.setattr(redis_scan, "_ReadAhead", Recorded)
    with override_settings(RETENTION_ADMIN={"REDIS_POLICY_REFRESH_SECONDS": 0, "REDIS_SCAN_COUNT": 40}):
        report = cleanup("--backend", "redis")
    # SCAN does not run ahead of the reads: a couple of batches' keys at most are held
    # (43 parts of 7 keys in all here; a batch is about 40 keys, 6 parts).
    assert len(reads) == 1 and reads[0].peak_parts <= 2 * redis_scan.READ_AHEAD + 12
    unmatched = report["redis"]["unmatched"]
    assert report["redis"]["scanned"] >= 301
    assert (unmatched["matched"], unmatched["deleted"]) == (150, 150)
    assert (unmatched["ttl_wrong"], unmatched["ttl_fixed"]) == (150, 150)
    assert redis_client.type(key("a-list")) == b"list"
    left = [k for k in redis_client.scan_iter(match=f"{KEY_PREFIX}celery-task-meta-many-*")]
    assert len(left) == 150 and all(redis_client.pttl(k) > 0 for k in left)


def test_max_runtime_stops_the_scan_and_its_reads_ahead(redis_app, redis_client):
    from retention_admin.matching import Governance

    for n in range(50):
        put(redis_client, f"job-{n}", "jobs.resize", age=2 * DAY)
    governance = Governance.load()
    enforcer = redis_scan.Enforcer(
        app.backend, governance, rules=governance.rules, remainder=True, now=timezone.now(),
        deadline=time.monotonic() - 1,
    )
    report = enforcer.run()
    assert report["stopped"] and report["scanned"] == 0
    assert len(redis_client.keys(f"{KEY_PREFIX}celery-task-meta-job-*")) == 50


def test_values_the_fast_parser_refuses_are_still_judged_and_odd_names_left_alone(redis_app, redis_client):
    # NaN is valid for Python's json module (and kombu writes it); orjson refuses it.
    value = json.dumps({"status": "SUCCESS", "result": float("nan"), "traceback": None, "children": [],
                        "date_done": (timezone.now() - 2 * DAY).isoformat(), "name": "jobs.resize",
                        "task_id": "nan"})
    redis_client.set(key("nan"), value)
    # A task name that is not a string: no policy can match it, the key is left alone.
    odd = json.loads(value.replace("NaN", "1"))
    odd["name"] = ["jobs", "resize"]
    redis_client.set(key("odd"), json.dumps(odd))
    report = cleanup("--backend", "redis")
    assert report["redis"]["unmatched"]["deleted"] == 1 and report["redis"]["unreadable"] == 1
    assert redis_client.exists(key("odd")) and not redis_client.exists(key("nan"))


def test_a_policy_change_applies_to_the_next_enforcer_run(redis_app, redis_client):
    api = policy("t-api", priority=1, task_name_pattern="api.*", keep_for=timedelta(hours=6))
    put(redis_client, "api", "api.fetch", age=timedelta(hours=1))
    cleanup("--backend", "redis")
    assert 5 * HOUR_MS - 10_000 <= redis_client.pttl(key("api")) <= 5 * HOUR_MS
    api.keep_for = timedelta(hours=3)
    api.save()
    report = cleanup("--backend", "redis")
    assert by_name(report, "t-api")["ttl_fixed"] == 1
    assert 2 * HOUR_MS - 10_000 <= redis_client.pttl(key("api")) <= 2 * HOUR_MS
    api.enabled = False
    api.save()
    report = cleanup("--backend", "redis")  # now the remainder: result_expires (1 day)
    assert report["redis"]["unmatched"]["ttl_fixed"] == 1
    assert 23 * HOUR_MS - 10_000 <= redis_client.pttl(key("api")) <= 23 * HOUR_MS


def test_size_matchers_decide_only_where_name_and_status_do_not(redis_app, redis_client):
    policy("t-big", priority=1, task_name_pattern="reports.*", min_result_bytes=1000, keep_for=timedelta(hours=2))
    policy("t-reports", priority=2, task_name_pattern="reports.*", keep_for=timedelta(hours=10))
    policy("t-api", priority=3, task_name_pattern="api.*", keep_for=timedelta(hours=6))
    put(redis_client, "big", "reports.daily", age=timedelta(hours=1), result="x" * 2000)
    put(redis_client, "small", "reports.daily", age=timedelta(hours=1), result="x")
    put(redis_client, "api", "api.fetch", age=timedelta(hours=1), result="x" * 2000)
    report = cleanup("--backend", "redis")
    assert by_name(report, "t-big")["ttl_fixed"] == 1 and by_name(report, "t-reports")["ttl_fixed"] == 1
    assert 1 * HOUR_MS - 10_000 <= redis_client.pttl(key("big")) <= 1 * HOUR_MS
    assert 9 * HOUR_MS - 10_000 <= redis_client.pttl(key("small")) <= 9 * HOUR_MS
    assert 5 * HOUR_MS - 10_000 <= redis_client.pttl(key("api")) <= 5 * HOUR_MS
