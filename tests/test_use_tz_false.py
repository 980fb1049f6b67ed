"""``USE_TZ = False`` (Django's default before 5.0) with a ``TIME_ZONE`` that is not UTC.

The database then holds naive local times. Archives still carry UTC (the format
says so, in their content and their object names), restore puts back the very
naive local time that was archived, and explain, snapshots and the dashboard
show local times without mixing naive and aware datetimes.

Each test switches with ``override_settings`` (Django resets the connections'
time zones on that signal, and PostgreSQL's session zone with them). The last
test runs this module again in a process whose settings say ``USE_TZ = False``
from the start (``DJANGO_USE_TZ=0 DJANGO_TIME_ZONE=America/New_York``), so no
connection ever saw ``USE_TZ = True``.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import pytest
from django.conf import settings
from django.core.cache import cache
from django.core.management import call_command
from django.db import connection
from django.db.models import Q
from django.test import override_settings
from django.utils import timezone
from django_celery_results.models import TaskResult

from retention_admin import archive
from retention_admin.dashboard import build
from retention_admin.executor import Options, Selection, run_cleanup
from retention_admin.explain import as_dict, explain
from retention_admin.health import CACHE_KEY
from retention_admin.matching import row_bytes_expression
from retention_admin.models import (
    ArchiveBatch,
    ArchivedResult,
    CleanupRun,
    RetentionHold,
    RetentionPolicy,
    RetentionTier,
)
from retention_admin.restore import restore_batches
from retention_admin.snapshots import take_snapshot

from .conftest import ResultFactory, ids_left

pytestmark = pytest.mark.django_db

DAY = timedelta(days=1)
ZONE = "America/New_York"
IN_CHILD = os.environ.get("DJANGO_USE_TZ") == "0"


@pytest.fixture
def no_tz(request: pytest.FixtureRequest) -> Iterator[ZoneInfo]:
    """USE_TZ = False in the zone a test is parametrized with (New York otherwise)."""
    zone = getattr(request, "param", ZONE)
    with override_settings(USE_TZ=False, TIME_ZONE=zone):
        yield ZoneInfo(zone)


@pytest.fixture
def results(no_tz: ZoneInfo, make_result: ResultFactory) -> ResultFactory:
    """``make_result`` once USE_TZ = False is in force (its dates are naive local times)."""
    return make_result


@pytest.fixture
def archives(no_tz: ZoneInfo, tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "archive"
    directory.mkdir()
    with override_settings(RETENTION_ADMIN={"ARCHIVE_DIR": str(directory)}):
        yield directory


def audit_policy() -> RetentionPolicy:
    return RetentionPolicy.objects.create(
        name="audit", tier=RetentionTier.objects.get(slug="daily"), priority=1, archive=True,
        task_name_pattern="audit.*", keep_for=DAY,
    )


def run_audit() -> dict[str, Any]:
    return run_cleanup(Selection(policies=["audit"]), Options()).report


def local_time(days_ago: int) -> datetime:
    """A naive local time whose UTC date is another day: late west of UTC, early east of it."""
    day = timezone.now() - days_ago * DAY
    west = timezone.get_default_timezone().utcoffset(day) < timedelta(0)
    return day.replace(hour=21 if west else 2, minute=30, second=15, microsecond=123456)


def utc_of(naive: datetime, zone: ZoneInfo) -> datetime:
    return naive.replace(tzinfo=zone).astimezone(UTC)


def records_of(batch: ArchiveBatch, directory: Path) -> list[dict[str, Any]]:
    with gzip.open(directory / batch.name, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


# -- archive, verify, restore ------------------------------------------------------


@pytest.mark.parametrize("no_tz", [ZONE, "Asia/Kolkata"], indirect=True)
def test_archive_verify_and_restore_round_trip_every_column(no_tz, results, archives):
    assert settings.USE_TZ is False and timezone.is_naive(timezone.now())
    audit_policy()
    done, started, created = local_time(5), local_time(5) - timedelta(seconds=3), local_time(5) - timedelta(minutes=1)
    row = results(task_id="a-old", task_name="audit.login", result='{"user": "zoë"}')
    # Every date column: date_started came with django-celery-results 2.6 (our floor is 2.5).
    dates = [
        f.name for f in TaskResult._meta.concrete_fields if f.get_internal_type() == "DateTimeField"
    ]
    TaskResult.objects.filter(pk=row.pk).update(
        **({"date_started": started} if "date_started" in dates else {}),
        date_done=done, date_created=created, traceback="Traceback ...",
        meta='{"children": []}', task_args="[1]", task_kwargs='{"x": 1}', worker="w1@host", periodic_task_name="nightly",
    )
    results(task_id="a-new", task_name="audit.login", age=timedelta(hours=1))
    before = TaskResult.objects.values().get(task_id="a-old")
    assert before["date_done"] == done  # naive local time, as stored

    report = run_audit()

    assert report["status"] == "succeeded", report
    assert ids_left() == {"a-new"}
    batch = ArchiveBatch.objects.get()
    assert (batch.status, batch.records, batch.deleted) == (ArchiveBatch.Status.COMPLETE, 1, 1)
    # The batch's columns hold what the database holds: the same naive local time.
    assert batch.first_done == done and batch.last_done == done
    assert ArchivedResult.objects.get(task_id="a-old").date_done == done
    # Content and object name are UTC: the evening's local date is not the UTC one.
    utc = utc_of(done, no_tz)
    assert utc.date() != done.date() and f"{utc:%Y%m%dT%H%M%S}" != f"{done:%Y%m%dT%H%M%S}"
    assert batch.name.startswith(f"database/audit/{utc:%Y/%m/%d}/audit-{utc:%Y%m%dT%H%M%S}-{utc:%Y%m%dT%H%M%S}-batch")
    (record,) = records_of(batch, archives)
    for key in dates:
        assert record[key].endswith("+00:00"), record[key]
        assert datetime.fromisoformat(record[key]) == utc_of(before[key], no_tz), key
    assert record["date_done"] == utc.isoformat(timespec="microseconds")
    assert archive.verify_batch(batch).ok

    out = io.StringIO()
    call_command("restore_results", str(batch.pk), "--json", stdout=out)

    after = TaskResult.objects.values().get(task_id="a-old")
    for key, value in before.items():
        if key != "id":
            assert after[key] == value, key
    restored = json.loads(out.getvalue())
    batch.refresh_from_db()
    assert batch.status == ArchiveBatch.Status.RESTORED and timezone.is_naive(batch.grace_until)
    assert batch.grace_until > timezone.now() + 6 * DAY
    # The report's time says which zone it is in.
    assert datetime.fromisoformat(restored["grace_until"]) == batch.grace_until.replace(tzinfo=no_tz)
    # Restore grace compares naive local times with naive local times: it protects.
    run_audit()
    assert ids_left() == {"a-old", "a-new"}


def test_many_batches_read_in_chunks_lose_nothing(results, archives):
    audit_policy()
    for i in range(23):
        row = results(task_id=f"a{i:02d}", task_name="audit.x")
        TaskResult.objects.filter(pk=row.pk).update(date_done=local_time(5 + i))
    with override_settings(RETENTION_ADMIN={"ARCHIVE_DIR": str(archives), "ARCHIVE_BATCH_RECORDS": 5}):
        report = run_audit()
    assert report["totals"]["archived"] == 23 and ids_left() == set()
    batches = list(ArchiveBatch.objects.order_by("id"))
    assert [b.records for b in batches] == [5, 5, 5, 5, 3]
    assert all(archive.verify_batch(b).ok for b in batches)

    restore_batches([b.pk for b in batches])
    assert ids_left() == {f"a{i:02d}" for i in range(23)}
    assert {t: d for t, d in TaskResult.objects.values_list("task_id", "date_done")} == {
        f"a{i:02d}": local_time(5 + i) for i in range(23)
    }


def test_due_reader_cursor_walks_naive_dates_across_chunks(results):
    base = local_time(10).replace(microsecond=0)
    dates = [base + timedelta(seconds=s) for s in (3, 3, 3, 2.5, 2.5, 2, 2, 2, 2, 1)]
    for n, done in enumerate(dates):
        row = results(task_id=f"o{n}", task_name="audit.x")
        TaskResult.objects.filter(pk=row.pk).update(date_done=done)
    expected = list(TaskResult.objects.order_by("date_done", "id").values_list("task_id", flat=True))
    due = Q(task_name="audit.x", date_done__lt=timezone.now() - DAY)

    reader = archive.DueReader(due, "default", "audit", row_bytes_expression(), 3, prefetch=False)
    chunks = list(reader.chunks())

    assert [len(c) for c in chunks] == [3, 3, 3, 1]
    lines = [json.loads(r.line) for c in chunks for r in c]
    assert [line["task_id"] for line in lines] == expected
    assert all(line["date_done"].endswith("+00:00") for line in lines), lines[0]["date_done"]
    # Every column in the table's order, then source and policy, in compact JSON
    # (PostgreSQL builds these lines itself, without USE_TZ in a sub-select of its own).
    assert list(lines[0]) == [f.attname for f in archive.TASK_RESULT_FIELDS] + ["source", "policy"]
    assert all(r.line.startswith(b'{"id":') and b'" : ' not in r.line for c in chunks for r in c)
    zone = ZoneInfo(ZONE)
    assert [datetime.fromisoformat(line["date_done"]) for line in lines] == [utc_of(d, zone) for d in sorted(dates)]


def test_records_added_one_by_one_find_their_rows(results, archives):
    # ArchiveWriter.add takes records (UTC text, as Redis records are): its look-up
    # rows must still match the naive local date_done the rows hold.
    audit_policy()
    results(task_id="a1", task_name="audit.x", age=5 * DAY)
    results(task_id="a2", task_name="audit.x", age=5 * DAY)
    writer = archive.ArchiveWriter(archive.configured_location(), policy=None, policy_name="audit", run=None)
    columns = [f.attname for f in archive.TASK_RESULT_FIELDS]
    for row in TaskResult.objects.order_by("id").values_list(*columns):
        writer.add(archive.record_from_row(row, policy="audit"))
    batch = writer.finish()
    TaskResult.objects.filter(task_id="a1").update(date_done=timezone.now())  # a1 re-ran

    held = Q(task_id__in=RetentionHold.objects.values("task_id"))
    deleted = sum(archive.delete_archived_rows(batch, held, "default"))

    assert deleted == 1 and ids_left() == {"a1"}


@pytest.mark.django_db(transaction=True)
def test_archive_outside_a_transaction_with_its_own_reader_and_deleter(seeded_transactional_db, no_tz, make_result, archives):
    # PostgreSQL and MariaDB read ahead and delete on connections of their own,
    # opened while USE_TZ = False is in force.
    audit_policy()
    for i in range(12):
        row = make_result(task_id=f"a{i:02d}", task_name="audit.x")
        TaskResult.objects.filter(pk=row.pk).update(date_done=local_time(5 + i))
    with override_settings(RETENTION_ADMIN={"ARCHIVE_DIR": str(archives), "ARCHIVE_BATCH_RECORDS": 5}):
        report = run_audit()
    assert (report["totals"]["archived"], report["totals"]["deleted"]) == (12, 12)
    assert ids_left() == set()
    batches = list(ArchiveBatch.objects.order_by("id"))
    assert [(b.records, b.status) for b in batches] == [(5, "complete"), (5, "complete"), (2, "complete")]
    texts = [r["date_done"] for b in batches for r in records_of(b, archives)]
    assert all(text.endswith("+00:00") for text in texts), texts[0]
    dates = sorted(datetime.fromisoformat(text) for text in texts)
    assert dates == sorted(utc_of(local_time(5 + i), no_tz) for i in range(12))


# -- explain, snapshots, dashboard -------------------------------------------------


def test_explain_shows_local_times(results, archives, no_tz):
    audit_policy()
    row = results(task_id="a0", task_name="audit.login", age=timedelta(hours=2))
    explanation = explain("a0")
    assert explanation.governing == "audit" and explanation.due_at == row.date_done + DAY
    data = as_dict(explanation)
    # Local time, saying its offset (a naive ISO string would read as UTC elsewhere).
    assert data["date_done"] == row.date_done.replace(tzinfo=no_tz).isoformat()
    assert data["due_at"] == (row.date_done + DAY).replace(tzinfo=no_tz).isoformat()
    due = (row.date_done + DAY).replace(tzinfo=no_tz)
    assert f"becomes due at {due:%Y-%m-%d %H:%M %Z}" in data["summary"]

    RetentionHold.objects.create(task_id="a0", reason="legal", until=timezone.now() + 3 * DAY)
    hold_until = RetentionHold.objects.get().until
    summary = explain("a0").summary()
    assert f"protected until {hold_until.replace(tzinfo=no_tz):%Y-%m-%d %H:%M %Z}" in summary

    out = io.StringIO()
    call_command("explain_result", "a0", stdout=out)
    assert "governed by policy 'audit'" in out.getvalue()


def test_explain_of_an_archived_result(results, archives):
    audit_policy()
    results(task_id="a0", task_name="audit.x", age=5 * DAY)
    run_audit()
    batch = ArchiveBatch.objects.get()
    data = as_dict(explain("a0"))
    assert not data["present"] and data["archives"][0]["batch"] == batch.pk
    assert f"restore_results {batch.pk} --task-id a0" in data["summary"]


def test_snapshot_records_stuck_results_in_local_time(results, no_tz):
    row = results(task_id="stuck", status="PENDING", age=3 * DAY)
    snapshot = take_snapshot()
    assert timezone.is_naive(snapshot.taken_at)
    oldest = snapshot.details["stuck"]["oldest"]
    assert datetime.fromisoformat(oldest) == row.date_done.replace(tzinfo=no_tz), oldest


@pytest.fixture
def no_cached_health() -> Iterator[None]:
    cache.delete(CACHE_KEY)
    yield
    cache.delete(CACHE_KEY)


def test_dashboard_and_its_charts_in_local_time(results, no_tz, no_cached_health, admin_client):
    from retention_admin.backfill import backfill
    from retention_admin.models import StorageSnapshot

    for hours in range(0, 24 * 7, 5):
        results(age=timedelta(hours=hours), task_name="reports.build", result='"' + "x" * 300 + '"')
    older = take_snapshot()
    StorageSnapshot.objects.filter(pk=older.pk).update(taken_at=timezone.now() - 3 * DAY, table_bytes=1000)
    latest = take_snapshot()
    StorageSnapshot.objects.filter(pk=latest.pk).update(table_bytes=4000)  # growing: a dated forecast
    backfill(7)
    # More runs than bars: one bar per day, truncated to local days.
    CleanupRun.objects.bulk_create(
        CleanupRun(trigger="task", status="succeeded", deleted=1, started_at=timezone.now() - timedelta(hours=i))
        for i in range(70)
    )
    # A backend health recorded while USE_TZ was still True: an aware time.
    cache.set(CACHE_KEY, {"ok": True, "backend": "db", "checked_at": datetime.now(UTC).isoformat(), "steps": []})

    context = build("7d")

    charts = {chart.key: chart for chart in context["charts"]}
    labels = [row[0].lstrip("≈") for row in charts["rows"].rows]
    assert latest.taken_at.strftime("%m-%d %H:%M") in labels  # naive local, shown as stored
    assert ZONE in charts["rows"].svg
    today = timezone.now().strftime("%Y-%m-%d")
    assert today in [row[0] for row in charts["runs"].rows]
    assert context["health"]["age"] < timedelta(minutes=1)
    assert any("reaches" in line for line in context["forecast"].lines), context["forecast"].lines

    response = admin_client.get("/admin/retention_admin/storagesnapshot/dashboard/", {"period": "30d"})
    assert response.status_code == 200


# -- settings that say USE_TZ = False from the start -------------------------------


def _child_database_url() -> str:
    """This run's database under another name: the child creates its own test database."""
    url = os.environ.get("DATABASE_URL", "")
    parts = urlsplit(url)
    if not url or parts.scheme.startswith("sqlite"):
        return url  # SQLite tests run in memory
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "_notz"))


@pytest.mark.skipif(IN_CHILD, reason="the child process runs the rest of this module")
def test_whole_module_with_use_tz_false_in_the_settings():
    env = {
        **os.environ,
        "DJANGO_USE_TZ": "0",
        "DJANGO_TIME_ZONE": ZONE,
        "DATABASE_URL": _child_database_url(),
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
        env=env, capture_output=True, text=True, timeout=540, check=False,
        cwd=str(Path(__file__).resolve().parent.parent),
    )
    tail = (done.stdout + done.stderr)[-4000:]
    assert done.returncode == 0, tail
    assert " passed" in done.stdout and " failed" not in done.stdout, tail


@pytest.mark.skipif(not IN_CHILD, reason="checks the child process's settings")
def test_the_child_runs_with_use_tz_false_from_the_start():
    assert settings.USE_TZ is False and settings.TIME_ZONE == ZONE
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SHOW TIME ZONE")
            assert cursor.fetchone()[0] == ZONE
