"""Storage snapshots: figures checked against the real database, thresholds, the signal."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test import override_settings
from django.utils import timezone
from django_celery_results.models import ChordCounter, GroupResult, TaskResult

from retention_admin import snapshots
from retention_admin.alerts import evaluate
from retention_admin.conf import setting_errors
from retention_admin.executor import Options, Selection, run_cleanup
from retention_admin.matching import row_bytes
from retention_admin.models import StorageSnapshot
from retention_admin.signals import threshold_crossed
from retention_admin.snapshots import sampled_tally, take_snapshot
from testproject.celery import app

from .celery_conf import celery_settings

pytestmark = pytest.mark.django_db


def _seed(make_result: Any) -> None:
    for i in range(6):
        make_result(task_name="reports.build", result='{"rows": %d, "data": "%s"}' % (i, "x" * 500))
    for _ in range(3):
        make_result(task_name="mail.send", result=None)
    make_result(task_name="mail.send", result="null")
    make_result(task_name="mail.send", status="FAILURE", result='{"exc_type": "ValueError"}')
    make_result(task_name=None, status="SUCCESS", result='"légacy"')


def test_exact_snapshot_matches_the_table(make_result, vendor):
    _seed(make_result)
    GroupResult.objects.create(group_id="g1", result="[]")
    ChordCounter.objects.create(group_id="c1", sub_tasks="[]", count=1)

    snap = take_snapshot()

    rows = list(TaskResult.objects.all())
    assert snap.kind == "measured" and not snap.rows_estimated
    assert snap.task_rows == len(rows) == 12
    assert snap.rows_by_status == {"FAILURE": 1, "SUCCESS": 11}
    assert snap.bytes_by_status["FAILURE"] == row_bytes(TaskResult.objects.get(status="FAILURE"))
    assert sum(snap.bytes_by_status.values()) == sum(row_bytes(r) for r in rows)
    assert (snap.group_rows, snap.chord_rows) == (1, 1)
    top = {t["task_name"]: t for t in snap.rows_by_task}
    assert top["reports.build"]["rows"] == 6
    assert top["reports.build"]["bytes"] == sum(row_bytes(r) for r in rows if r.task_name == "reports.build")
    assert snap.rows_by_task[0]["task_name"] == "reports.build"  # most bytes first
    assert top[None]["rows"] == 1  # results stored without a task name
    # Empty results: NULL and "null" count, a failure's payload does not.
    assert snap.task_profile["mail.send"] == {
        "rows": 5, "bytes": top["mail.send"]["bytes"], "empty": 4,
    }
    assert snap.task_profile["reports.build"]["empty"] == 0
    # The database's own size of the table and its indexes.
    assert snap.table_bytes and snap.table_bytes > 0
    assert snap.bytes_estimated is (vendor == "mysql")  # InnoDB's are statistics
    assert snap.details["bytes_method"] == {
        "postgresql": "pg_total_relation_size", "mysql": "information_schema", "sqlite": "dbstat",
    }[vendor]
    assert snap.details["tables"]["task_results"] == snap.table_bytes
    assert snap.duration_s is not None and snap.redis is None and snap.alerts == []


def test_top_tasks_are_limited_by_the_setting(make_result):
    for i in range(4):
        make_result(task_name=f"t{i}", result="x" * (100 * (i + 1)))
    with override_settings(RETENTION_ADMIN={"SNAPSHOT_TOP_TASKS": 2}):
        snap = take_snapshot()
    assert [t["task_name"] for t in snap.rows_by_task] == ["t3", "t2"]
    assert len(snap.task_profile) == 4  # the profile keeps every name


def test_results_stuck_in_pending_or_started(make_result):
    make_result(status="STARTED", age=timedelta(days=3))
    make_result(status="PENDING", age=timedelta(days=2))
    make_result(status="STARTED", age=timedelta(hours=1))  # still running, fine
    make_result(status="SUCCESS", age=timedelta(days=9))
    stuck = take_snapshot().details["stuck"]
    assert stuck["rows"] == {"PENDING": 1, "STARTED": 1}
    assert stuck["older_than_s"] == 86400
    assert stuck["oldest"] is not None


def test_stratified_sample_weights_thinned_ranges(make_result):
    """A sample along the ids, weighted by density, estimates rows where a cleanup left gaps."""
    for i in range(400):
        make_result(task_name="old" if i < 200 else "new", status="FAILURE" if i % 4 == 0 else "SUCCESS")
    ids = list(TaskResult.objects.order_by("id").values_list("id", flat=True))
    # A cleanup thinned out the oldest half: one row in ten stays.
    TaskResult.objects.filter(id__in=[pk for n, pk in enumerate(ids[:200]) if n % 10]).delete()
    tally, read = sampled_tally(connection.alias, sample_rows=100)
    assert 0 < read <= 100
    assert tally.rows == pytest.approx(220, rel=0.25)
    assert tally.tasks["new"][0] == pytest.approx(200, rel=0.25)
    assert tally.tasks["old"][0] == pytest.approx(20, rel=0.6)
    assert tally.status_rows["FAILURE"] / tally.rows == pytest.approx(0.25, abs=0.1)


@pytest.mark.django_db(transaction=True)
def test_large_table_snapshot_uses_statistics_and_a_sample(make_result, vendor):
    """Above SNAPSHOT_EXACT_ROWS: total from the database's statistics (SQLite: a count), split from a sample."""
    for i in range(300):
        make_result(task_name=f"t{i % 3}", status="FAILURE" if i % 3 == 0 else "SUCCESS")
    table = TaskResult._meta.db_table
    if vendor != "sqlite":  # SQLite keeps no row statistics: it counts, then samples
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {'TABLE ' if vendor == 'mysql' else ''}{table}")
    with override_settings(RETENTION_ADMIN={"SNAPSHOT_EXACT_ROWS": 50, "SNAPSHOT_SAMPLE_ROWS": 100}):
        snap = take_snapshot()
    assert snap.rows_estimated
    assert snap.details["rows_method"] == ("count" if vendor == "sqlite" else "statistics")
    assert 0 < snap.details["sample_rows"] <= 100
    assert snap.task_rows == (300 if vendor == "sqlite" else pytest.approx(300, rel=0.5))
    assert sum(snap.rows_by_status.values()) == pytest.approx(snap.task_rows, abs=2)
    assert snap.rows_by_status["FAILURE"] / snap.task_rows == pytest.approx(1 / 3, abs=0.1)


@pytest.mark.django_db(transaction=True)
def test_postgresql_page_sample_counts_the_rows_there_now(vendor):
    """PostgreSQL: a TABLESAMPLE of pages estimates total and split from the live rows.

    Right after a cleanup (no ANALYZE since), the planner's statistics still count
    the deleted rows; the page sample does not.
    """
    if vendor != "postgresql":
        pytest.skip("TABLESAMPLE sampling is the PostgreSQL path; other databases sample by id")
    body = "x" * 1500  # about five rows a page: ~600 pages, enough for a page sample
    TaskResult.objects.bulk_create(
        TaskResult(task_id=f"page-{i}", task_name="old" if i < 1500 else "new",
                   status="FAILURE" if i % 4 == 0 else "SUCCESS", result=body)
        for i in range(3000)
    )
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {TaskResult._meta.db_table}")
    # A cleanup thins out the old half: one row in five stays.
    TaskResult.objects.filter(task_name="old").exclude(task_id__regex=r"[05]$").delete()
    kept_old = TaskResult.objects.filter(task_name="old").count()
    assert 200 < kept_old < 400
    live = 1500 + kept_old
    stale = snapshots.statistics_rows(connection.alias)
    assert stale == pytest.approx(3000, rel=0.05)  # control: statistics still count the deleted rows

    with override_settings(RETENTION_ADMIN={"SNAPSHOT_EXACT_ROWS": 100, "SNAPSHOT_SAMPLE_ROWS": 1500}):
        snap = take_snapshot()
    assert snap.rows_estimated
    assert snap.details["rows_method"] == "page sample"
    assert 0 < snap.details["sample_rows"] < live
    assert snap.task_rows == pytest.approx(live, rel=0.15)
    by_task = {entry["task_name"]: entry["rows"] for entry in snap.rows_by_task}
    assert by_task["new"] == pytest.approx(1500, rel=0.2)
    assert by_task["old"] == pytest.approx(kept_old, rel=0.35)
    assert snap.rows_by_status["FAILURE"] / snap.task_rows == pytest.approx(
        TaskResult.objects.filter(status="FAILURE").count() / live, abs=0.08
    )


def test_postgresql_page_sample_declines_a_small_table(make_result, vendor):
    """Too few pages for the share asked: no page sample (the id-strata sample is used)."""
    if vendor != "postgresql":
        pytest.skip("TABLESAMPLE sampling is the PostgreSQL path")
    for _ in range(30):
        make_result()
    assert snapshots.page_sampled_tally(connection.alias, sample_rows=10, estimate=30) is None


def test_snapshot_after_every_real_run_not_after_dry_runs(make_result):
    make_result(status="FAILURE", age=timedelta(days=8))
    run_cleanup(Selection(policies=["failures-7d"]), Options(dry_run=True))
    assert StorageSnapshot.objects.count() == 0
    run_cleanup(Selection(policies=["failures-7d"]), Options())
    snap = StorageSnapshot.objects.get()
    assert snap.task_rows == 0  # taken after the run deleted the result


def test_a_failing_snapshot_never_fails_the_run(make_result, monkeypatch, caplog):
    make_result(status="FAILURE", age=timedelta(days=8))

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("statistics unavailable")

    monkeypatch.setattr(snapshots, "statistics_rows", broken)
    caplog.set_level(logging.ERROR, logger="retention_admin")
    run = run_cleanup(Selection(policies=["failures-7d"]), Options())
    assert run.status == "succeeded" and run.deleted == 1
    assert StorageSnapshot.objects.count() == 0
    assert f"storage snapshot after cleanup run {run.pk} failed" in caplog.text
    assert "statistics unavailable" in caplog.text


def test_the_hourly_task_records_backend_health(make_result):
    from retention_admin.tasks import take_snapshot as task

    make_result()
    snap = StorageSnapshot.objects.get(pk=task.apply().get())
    assert snap.health["ok"] is True
    assert [s["step"] for s in snap.health["steps"]] == ["store", "read", "forget", "verify forgotten"]
    assert TaskResult.objects.count() == 1  # the probe is gone


# -- Redis figures -----------------------------------------------------------
def _reset_backend() -> None:
    app._backend_cache = None
    app._local.__dict__.pop("backend", None)


@pytest.fixture
def redis_results(redis_server: None) -> Iterator[None]:
    with celery_settings(
        result_backend="retention_admin.backends.RetentionRedisBackend+redis://127.0.0.1:6379/14",
        result_backend_transport_options={"global_keyprefix": "rasnaptest:"},
    ):
        _reset_backend()
        yield
    _reset_backend()


@pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning")
def test_redis_figures_are_recorded_when_redis_holds_results(redis_results):
    import redis

    client = redis.Redis.from_url("redis://127.0.0.1:6379/14")
    app.backend.store_result("rasnap-1", {"x": 1}, "SUCCESS")
    try:
        snap = take_snapshot()
    finally:
        client.delete(*client.keys("rasnaptest:*") or ["none"])
    assert isinstance(snap.redis["used_memory"], int) and snap.redis["used_memory"] > 0
    assert snap.redis["keys"]["task"] >= 1
    assert snap.redis["error"] is None


# -- thresholds ---------------------------------------------------------------
@pytest.fixture
def received() -> Iterator[list[dict[str, Any]]]:
    calls: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        calls.append(kwargs)

    threshold_crossed.connect(receiver)
    yield calls
    threshold_crossed.disconnect(receiver)


def test_crossing_a_threshold_warns_once_and_sends_the_signal(make_result, received, caplog):
    caplog.set_level(logging.WARNING, logger="retention_admin")
    with override_settings(RETENTION_ADMIN={"ALERT_ROWS": 2}):
        make_result()
        assert take_snapshot().alerts == []
        make_result()
        make_result()
        over = take_snapshot()
        assert [a["key"] for a in over.alerts] == ["rows"]
        assert over.alerts[0]["message"] == "The task result table is 3 rows, over the threshold of 2 rows."
        assert len(received) == 1 and received[0]["snapshot"] == over
        assert received[0]["alerts"] == over.alerts
        assert "threshold crossed: The task result table is 3 rows" in caplog.text
        # Still over: the banner stays (alerts stored), no new log or signal.
        caplog.clear()
        again = take_snapshot()
        assert again.alerts and len(received) == 1 and "threshold crossed" not in caplog.text
        # Back under, then over again: a new crossing.
        TaskResult.objects.all().delete()
        assert take_snapshot().alerts == []
        for _ in range(3):
            make_result()
        take_snapshot()
        assert len(received) == 2


def test_bytes_growth_and_redis_thresholds(make_result, received):
    make_result(result="x" * 2000)
    day_ago = timezone.now() - timedelta(days=1)
    StorageSnapshot.objects.create(taken_at=day_ago, table_bytes=1000, database=connection.alias)
    StorageSnapshot.objects.create(
        taken_at=day_ago, table_bytes=1, kind="backfill", database=connection.alias
    )  # not a measurement
    with override_settings(RETENTION_ADMIN={"ALERT_BYTES": 10, "ALERT_GROWTH_PER_DAY": 100, "ALERT_REDIS_MEMORY": 1000}):
        snap = take_snapshot()
        keys = [a["key"] for a in snap.alerts]
        assert keys == ["bytes", "growth_per_day"]
        growth = snap.alerts[1]
        assert growth["value"] == pytest.approx(snap.table_bytes - 1000, rel=0.01)
        assert "a day" in growth["message"]
        with_redis = StorageSnapshot(task_rows=0, table_bytes=None, redis={"used_memory": 5000})
        assert [a["key"] for a in evaluate(with_redis)] == ["redis_memory"]
    assert len(received) == 1 and [a["key"] for a in received[0]["alerts"]] == keys


def test_a_failing_receiver_is_logged_and_the_snapshot_kept(make_result, caplog):
    def broken(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("slack is down")

    threshold_crossed.connect(broken)
    try:
        make_result()
        with override_settings(RETENTION_ADMIN={"ALERT_ROWS": 0 + 1}):
            make_result()
            snap = take_snapshot()
    finally:
        threshold_crossed.disconnect(broken)
    assert StorageSnapshot.objects.filter(pk=snap.pk).exists()
    assert "slack is down" in caplog.text


def test_threshold_settings_are_validated():
    assert setting_errors({"ALERT_ROWS": 0}) == [
        "RETENTION_ADMIN['ALERT_ROWS'] must be None or a whole number of at least 1, not 0."
    ]
    assert setting_errors({"ALERT_BYTES": "1GB"})[0].startswith("RETENTION_ADMIN['ALERT_BYTES'] must be")
    assert setting_errors({"SNAPSHOT_EXACT_ROWS": None})
    assert setting_errors({"ALERT_REDIS_MEMORY": None, "ALERT_GROWTH_PER_DAY": 10**9, "STUCK_AFTER_SECONDS": 60}) == []
