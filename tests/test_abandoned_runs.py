"""A run whose process died is closed as abandoned, with the counts it had saved."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.test import override_settings
from django.utils import timezone
from django_celery_results.models import TaskResult

from retention_admin.executor import Options, Selection, run_cleanup
from retention_admin.models import CleanupLease, CleanupRun
from retention_admin.runs import close_abandoned

from .test_concurrency import database_url

ROOT = Path(__file__).resolve().parent.parent


def running(holder: str, beat_ago: float | None) -> CleanupRun:
    run = CleanupRun.objects.create(trigger="command", holder=holder, deleted=7, status=CleanupRun.Status.RUNNING)
    started = timezone.now() - timedelta(seconds=600)
    beat = timezone.now() - timedelta(seconds=beat_ago) if beat_ago is not None else None
    CleanupRun.objects.filter(pk=run.pk).update(started_at=started, heartbeat_at=beat)
    return run


@pytest.mark.django_db
def test_only_runs_without_heartbeat_or_live_lease_are_closed():
    dead = running("host:1:dead", beat_ago=400)
    never_beat = running("host:2:never", beat_ago=None)
    beating = running("host:3:alive", beat_ago=5)
    leased = running("host:4:leased", beat_ago=400)
    CleanupLease.objects.create(scope="remainder", holder="host:4:leased", expires_at=timezone.now() + timedelta(minutes=5))

    assert close_abandoned("default", lease_seconds=300) == 2
    status = dict(CleanupRun.objects.values_list("holder", "status"))
    assert status == {
        "host:1:dead": "abandoned", "host:2:never": "abandoned", "host:3:alive": "running", "host:4:leased": "running",
    }
    closed = CleanupRun.objects.get(pk=dead.pk)
    assert closed.deleted == 7 and closed.finished_at is not None and "stopped without finishing" in closed.error
    assert CleanupRun.objects.get(pk=never_beat.pk).status == "abandoned"
    assert CleanupRun.objects.get(pk=beating.pk).status == CleanupRun.objects.get(pk=leased.pk).status == "running"


@pytest.mark.django_db(transaction=True)
def test_a_killed_run_is_closed_by_the_next_one_with_the_counts_it_had_saved(seeded_transactional_db):
    if connection.vendor == "sqlite":
        pytest.skip("the SQLite test database is in memory; another process cannot see it")
    TaskResult.objects.bulk_create(
        TaskResult(task_id=f"t{i}", task_name="tasks.work", status="SUCCESS", result='"x"',
                   content_type="application/json", content_encoding="utf-8")
        for i in range(2000)
    )
    TaskResult.objects.update(date_done=timezone.now() - timedelta(days=3))
    env = {**os.environ, "DATABASE_URL": database_url(), "DJANGO_SETTINGS_MODULE": "testproject.settings",
           "RETENTION_ADMIN_JSON": json.dumps({"LEASE_SECONDS": 2})}
    child = subprocess.Popen(
        [sys.executable, "manage.py", "cleanup_results", "--batch-size", "50", "--sleep", "0.2", "--no-progress"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not CleanupRun.objects.filter(deleted__gt=0).exists():
            assert time.monotonic() < deadline and child.poll() is None, "the child saved no progress"
            time.sleep(0.1)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    killed = CleanupRun.objects.get()
    assert killed.status == "running" and killed.deleted > 0
    gone_before = 2000 - TaskResult.objects.count()
    assert killed.deleted <= gone_before  # what it saved had been committed

    time.sleep(2.5)  # its heartbeat and lease are now older than LEASE_SECONDS
    with override_settings(RETENTION_ADMIN={"LEASE_SECONDS": 2}):
        later = run_cleanup(Selection(), Options())
    killed.refresh_from_db()
    assert killed.status == "abandoned" and killed.deleted > 0 and killed.finished_at is not None
    assert any("closed 1 earlier run" in note for note in later.notes)
    assert not TaskResult.objects.exists()  # the next run finished the work
    assert killed.deleted + later.deleted <= 2000 and later.deleted >= 2000 - gone_before
