"""``snapshot_results`` (with ``--backfill``) and ``check_result_backend`` against real servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.utils import timezone
from django_celery_results.models import TaskResult

from retention_admin.backfill import backfill
from retention_admin.health import VENDORS, latest_health
from retention_admin.models import CleanupRun, StorageSnapshot

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.django_db


def run(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


# -- snapshot_results -------------------------------------------------------------
def test_snapshot_results_prints_what_it_recorded(make_result):
    make_result()
    make_result(status="FAILURE")
    out, _ = run("snapshot_results")
    snap = StorageSnapshot.objects.get()
    assert out.startswith(f"Snapshot {snap.pk} at ")
    assert ": 2 task results, " in out and " table + indexes" in out
    assert "0 group results, 0 chord counters; took " in out


def test_snapshot_results_json(make_result):
    make_result()
    out, _ = run("snapshot_results", "--json", "--health")
    data = json.loads(out)
    snap = StorageSnapshot.objects.get()
    assert data["snapshot"] == snap.pk and data["task_rows"] == 1
    assert data["rows_by_status"] == {"SUCCESS": 1} and data["rows_estimated"] is False
    assert data["health"]["ok"] is True
    assert "backfill" not in data


def test_snapshot_results_warns_about_thresholds(make_result, settings):
    settings.RETENTION_ADMIN = {"ALERT_ROWS": 1}
    make_result()
    make_result()
    _, err = run("snapshot_results")
    assert err == "Warning: The task result table is 2 rows, over the threshold of 1 rows.\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backfill", "0"], "--backfill takes a number of days from 1 to 366, not 0."),
        (["--backfill", "400"], "--backfill takes a number of days from 1 to 366, not 400."),
        (["--database", "nope"], "Unknown database alias 'nope'; known aliases: default."),
    ],
)
def test_snapshot_results_refuses_bad_input(args, message):
    with pytest.raises(CommandError) as error:
        run("snapshot_results", *args)
    assert str(error.value) == message
    assert StorageSnapshot.objects.count() == 0


# -- backfill -------------------------------------------------------------------------
def test_backfill_reconstructs_rows_from_creation_dates(make_result):
    now = timezone.now().replace(minute=30, second=0, microsecond=0)
    for hours in (50, 40, 30, 20, 10, 5):
        make_result(age=timedelta(hours=hours) + (timezone.now() - now))
    make_result(status="FAILURE", age=timedelta(hours=30) + (timezone.now() - now))
    StorageSnapshot.objects.create(taken_at=now - timedelta(hours=24, minutes=20), task_rows=99, database=connection.alias)

    report = backfill(2, now=now)

    assert report.skipped == 1  # the hour next to the measured snapshot
    rows = list(StorageSnapshot.objects.filter(kind="backfill").order_by("taken_at"))
    assert len(rows) == report.created == 48 - 1
    assert all(r.rows_estimated and r.bytes_estimated for r in rows)
    by_time = {r.taken_at: r for r in rows}
    start = now.replace(minute=0) - timedelta(days=2)
    # 2 days ago: only the 50-hour-old result existed.
    assert by_time[start].task_rows == 1
    # 25 hours ago: the 50, 40 and 30 hour old results, one of them a failure.
    at = by_time[start + timedelta(hours=23)]
    assert at.rows_by_status == {"FAILURE": 1, "SUCCESS": 3}
    assert by_time[start + timedelta(hours=47)].task_rows == 7
    # The measured snapshot is kept; running again replaces, never duplicates.
    assert StorageSnapshot.objects.filter(kind="measured", task_rows=99).exists()
    again = backfill(2, now=now)
    assert again.replaced == report.created
    assert StorageSnapshot.objects.filter(kind="backfill").count() == report.created


def test_backfill_adds_back_what_runs_deleted(make_result):
    """Rows a run deleted count as present from their estimated creation until the run."""
    now = timezone.now().replace(minute=0, second=0, microsecond=0)
    run_at = now - timedelta(hours=6)
    CleanupRun.objects.create(
        trigger="command", status="succeeded", started_at=run_at, deleted=48,
        report={"policies": [{"name": "failures-7d", "matched": 24, "deleted": 24}],
                "unmatched": {"matched": 24, "deleted": 24}},
    )
    backfill(30, now=now)
    at = {s.taken_at: s for s in StorageSnapshot.objects.filter(kind="backfill")}
    # Just before the run all 48 deleted rows existed; after it none.
    before = at[run_at - timedelta(hours=1)]
    assert before.task_rows == 48
    assert before.rows_by_status == {"(deleted since)": 24, "FAILURE": 24}  # failures-7d: status known
    assert at[run_at + timedelta(hours=1)].task_rows == 0
    # Deleted failures were created over the period before the run's 7-day cutoff.
    assert 0 < at[run_at - timedelta(days=15)].rows_by_status.get("FAILURE", 0) < 24


def test_snapshot_results_backfill_command(make_result):
    make_result(age=timedelta(days=2))
    out, _ = run("snapshot_results", "--backfill", "3")
    assert "Reconstructed 72 hourly snapshots from " in out
    assert "(estimates; 0 earlier reconstructions replaced, 0 hours kept as measured)" in out
    assert StorageSnapshot.objects.filter(kind="backfill").count() == 72
    assert StorageSnapshot.objects.filter(kind="measured").count() == 1


# -- check_result_backend ---------------------------------------------------------------
def test_round_trip_through_the_configured_database_backend(make_result):
    make_result(task_id="kept")
    out, _ = run("check_result_backend")
    lines = out.splitlines()
    assert lines[0].startswith(
        "Result backend: retention_admin.backends.RetentionDatabaseBackend "
        f"({VENDORS[connection.vendor]} database "
    )
    assert [line.split()[0] for line in lines[1:5]] == ["store", "read", "forget", "verify"]
    assert all(" ok " in line and line.endswith(" ms") for line in lines[1:5])
    assert lines[5].startswith("Round trip ok in ")
    assert list(TaskResult.objects.values_list("task_id", flat=True)) == ["kept"]  # probe forgotten
    health, when = latest_health()
    assert health is not None and health["ok"] and when is not None


def test_check_result_backend_json():
    out, _ = run("check_result_backend", "--json")
    data = json.loads(out)
    assert data["ok"] is True and data["problem"] == "" and data["total_ms"] > 0
    assert [s["step"] for s in data["steps"]] == ["store", "read", "forget", "verify forgotten"]


def test_check_result_backend_refuses_a_bad_timeout():
    with pytest.raises(CommandError, match=r"^--timeout must be more than 0 seconds, not 0.0.$"):
        run("check_result_backend", "--timeout", "0")


def test_a_serializer_the_backend_refuses_to_read(celery_conf):
    celery_conf.result_serializer = "pickle"
    celery_conf.result_accept_content = ["json"]
    with pytest.raises(CommandError) as error:
        run("check_result_backend")
    message = str(error.value)
    assert message.startswith("read failed: The result serializer refused the probe on ")
    assert "result_serializer='pickle'" in message and "result_accept_content=['json']" in message
    assert not TaskResult.objects.exists()  # the probe is forgotten even so


@pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning")
def test_redis_round_trip_and_failures(redis_server):
    out, _ = run("check_result_backend", "--url", "redis://127.0.0.1:6379/14")
    assert out.startswith("Result backend: redis://127.0.0.1:6379/14\n") and "Round trip ok" in out
    cases = [
        ("redis://127.0.0.1:1/0", "store failed: redis://127.0.0.1:1/0 is not reachable: Error 111 connecting"),
        ("redis://127.0.0.1:6379/99", "store failed: redis://127.0.0.1:6379/99: the database does not exist"),
        ("redis://someone:s3cret@127.0.0.1:6379/14", "store failed: redis://someone:***@127.0.0.1:6379/14 refused the credentials"),
    ]
    for url, start in cases:
        with pytest.raises(CommandError) as error:
            run("check_result_backend", "--url", url, "--timeout", "2")
        assert str(error.value).startswith(start), str(error.value)
        assert "s3cret" not in str(error.value)


def _command_with(database_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url, "DJANGO_SETTINGS_MODULE": "testproject.settings"}
    return subprocess.run(
        [sys.executable, "manage.py", "check_result_backend"], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=60,
    )


# One per database: the suite runs once per database, each checks its own kind.
WRONG = {
    "postgresql": [
        ("postgres://postgres@127.0.0.1:5432/ra_snap_missing", 'does not exist or cannot be opened: connection failed'),
        ("postgres://postgres@127.0.0.1:1/ra_snap", "is not reachable: connection failed"),
    ],
    "mysql": [
        ("mysql://root@127.0.0.1:3306/ra_snap_missing", "does not exist or cannot be opened: (1049"),
        ("mysql://nobody_here@127.0.0.1:3306/ra_snap", "refused the credentials: ("),
        ("mysql://root@127.0.0.1:1/ra_snap", "is not reachable: (2003"),
    ],
    "sqlite": [
        ("sqlite:////nonexistent-dir/ra_snap.sqlite3", "does not exist or cannot be opened: unable to open database file"),
    ],
}


def test_a_stopped_or_wrong_database_is_named(vendor):
    for url, expected in WRONG[vendor]:
        done = _command_with(url)
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr
        assert done.stderr.startswith("CommandError: store failed: retention_admin.backends.RetentionDatabaseBackend ")
        assert expected in done.stderr, done.stderr
