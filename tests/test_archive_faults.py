"""Crash safety of archive-then-delete, with real processes on real PostgreSQL.

A real ``cleanup_results`` process archives into a real directory and is killed
(SIGKILL), cut off from the database (``pg_terminate_backend``) or meets a disk
that fills up. After every trial, every original task id is still in
``TaskResult`` or in an archive batch whose object verifies, and no batch whose
object is missing or truncated is marked complete; a final run then reaches
the intended state. ``FAULT_TRIALS`` sets the number of SIGKILL trials
(``make fault-test`` runs more).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from django.test import override_settings
from django.utils import timezone
from django_celery_results.models import TaskResult

from retention_admin import archive
from retention_admin.models import ArchiveBatch, ArchivedResult, RetentionPolicy

ROOT = Path(__file__).resolve().parent.parent
TRIALS = int(os.environ.get("FAULT_TRIALS", "30"))
BATCH_RECORDS = 60

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("seeded_transactional_db")]


@pytest.fixture
def postgresql_only():
    if connection.vendor != "postgresql":
        pytest.skip("the fault tests run on PostgreSQL (pg_terminate_backend, other processes)")


@pytest.fixture
def shared_database():
    if connection.vendor == "sqlite":
        pytest.skip("the SQLite test database is in memory; other processes cannot see it")


class Trials:
    """The dataset, the process under test and the invariants."""

    def __init__(self, directory: Path, storage: dict | None = None):
        self.directory = directory
        self.storage = storage
        self.due: set[str] = set()
        self.kept: set[str] = set()
        self.serial = 0
        RetentionPolicy.objects.filter(name="audit-30d").update(enabled=True, task_name_pattern="audit.*")

    def add(self, due: int, kept: int) -> None:
        old, new = timezone.now() - timedelta(days=40), timezone.now() - timedelta(days=1)
        rows = []
        for i in range(due + kept):
            self.serial += 1
            task_id = f"audit-{self.serial:06d}"
            (self.due if i < due else self.kept).add(task_id)
            rows.append(TaskResult(
                task_id=task_id, task_name="audit.event", status="SUCCESS", result=json.dumps({"n": "x" * 900}),
                content_type="application/json", content_encoding="utf-8", task_args="[]", task_kwargs="{}",
            ))
        TaskResult.objects.bulk_create(rows)
        ids = [r.task_id for r in rows]
        TaskResult.objects.filter(task_id__in=ids[:due]).update(date_done=old)
        TaskResult.objects.filter(task_id__in=ids[due:]).update(date_done=new)

    def env(self, **extra: str) -> dict[str, str]:
        s = connection.settings_dict
        env = {
            **os.environ,
            "DATABASE_URL": f"{'postgres' if connection.vendor == 'postgresql' else 'mysql'}://{s['USER']}@{s['HOST']}:{s['PORT']}/{s['NAME']}",
            "DJANGO_SETTINGS_MODULE": "testproject.settings",
            "RETENTION_ADMIN_JSON": json.dumps({
                "ARCHIVE_DIR": str(self.directory), "ARCHIVE_BATCH_RECORDS": BATCH_RECORDS, "LEASE_SECONDS": 1,
            }),
            "PGAPPNAME": "ra-fault",
            **extra,
        }
        if self.storage is not None:
            env["RETENTION_ARCHIVE_STORAGE"] = json.dumps(self.storage)
        return env

    def start(self, *args: str, **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "manage.py", "cleanup_results", "--policy", "audit-30d", "--no-progress",
             "--batch-size", "20", "--sleep", "0.01", *args],
            cwd=ROOT, env=self.env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def finish(self) -> None:
        """The completing run: exits 0, and the intended state is reached."""
        for _attempt in range(10):
            proc = self.start()
            out, err = proc.communicate(timeout=180)
            if proc.returncode != 3:
                break
            # A killed process's lease is still running out (LEASE_SECONDS is 1 here).
            time.sleep(1)
        assert proc.returncode == 0, (out, err)
        self.check()
        present = set(TaskResult.objects.values_list("task_id", flat=True))
        assert present & self.due == set(), "due results left in the table after the completing run"
        assert self.kept <= present, "a result that was not due was deleted"
        complete = set(
            ArchivedResult.objects.filter(batch__status=ArchiveBatch.Status.COMPLETE).values_list("task_id", flat=True)
        )
        assert self.due <= complete

    def check(self) -> None:
        """After any fault: nothing lost, nothing complete that does not verify."""
        present = set(TaskResult.objects.values_list("task_id", flat=True))
        verified: dict[int, bool] = {}
        for batch in ArchiveBatch.objects.exclude(status=ArchiveBatch.Status.WRITING):
            ok = archive.check_object(batch).ok
            verified[batch.pk] = ok
            if batch.status == ArchiveBatch.Status.COMPLETE:
                assert ok, f"complete batch {batch.pk} does not verify"
        safe = {
            task_id
            for task_id, batch_id in ArchivedResult.objects.values_list("task_id", "batch_id")
            if verified.get(batch_id)
        }
        lost = (self.due | self.kept) - present - safe
        assert not lost, f"lost {len(lost)} results, e.g. {sorted(lost)[:5]}"
        assert self.kept <= present


def test_sigkill_at_random_moments_loses_nothing(tmp_path, postgresql_only):
    rng = random.Random(int(os.environ.get("FAULT_SEED", "20261121")))
    trials = Trials(tmp_path)
    trials.add(due=600, kept=50)
    killed_mid_run = 0
    left: dict[str, int] = {}
    for _ in range(TRIALS):
        if len(trials.due - set(ArchivedResult.objects.values_list("task_id", flat=True))) < 600:
            trials.add(due=400, kept=10)
        # Paced so that most runs last past the kill: Django starts in ~0.5 s;
        # with a batch's deletion overlapping the next one's writing, ten batches
        # at --sleep 0.1 were over before most kills (41 of 100 trials killed).
        proc = trials.start("--sleep", "0.2")
        time.sleep(rng.uniform(0.3, 2.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed_mid_run += 1
        proc.communicate(timeout=60)
        trials.check()
        if proc.returncode == -signal.SIGKILL:
            # Its lease runs out (LEASE_SECONDS is 1 here) before the next trial
            # starts: otherwise that one only reports the lease busy and exits.
            time.sleep(1.1)
        for status in ArchiveBatch.objects.values_list("status", flat=True):
            left[status] = left.get(status, 0) + 1
    print(f"SIGKILL trials: {TRIALS}, killed mid-run {killed_mid_run}, batch states seen after kills {left}")
    assert killed_mid_run >= TRIALS // 2, "most processes finished before the kill; the trials tested little"
    trials.finish()


def test_database_connection_killed_mid_run_loses_nothing(tmp_path, postgresql_only):
    rng = random.Random(7)
    trials = Trials(tmp_path)
    trials.add(due=600, kept=50)
    terminated = 0
    for _ in range(max(5, TRIALS // 3)):
        # Paced like the SIGKILL trials: an unpaced run of a few hundred rows is
        # over (~0.3 s once started) before the connections are cut.
        proc = trials.start("--sleep", "0.1")
        time.sleep(rng.uniform(0.6, 2.0))
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'ra-fault' AND pid <> pg_backend_pid()"
            )
            terminated += cursor.fetchone()[0]
        proc.communicate(timeout=60)
        trials.check()
        if proc.returncode == 0:
            trials.add(due=200, kept=5)
    assert terminated, "no connection was ever terminated; the trials tested nothing"
    trials.finish()


def test_disk_filling_up_mid_write_loses_nothing(tmp_path, postgresql_only):
    storage = {"BACKEND": "testproject.storages.DiskFullAfter", "OPTIONS": {"location": str(tmp_path), "budget": 3}}
    storages = {**settings.STORAGES, "retention_archive": storage}
    with override_settings(STORAGES=storages):
        _disk_full(Trials(tmp_path, storage=storage), tmp_path)


def _disk_full(trials: Trials, tmp_path: Path) -> None:
    trials.add(due=400, kept=20)

    proc = trials.start()
    out, err = proc.communicate(timeout=120)

    assert proc.returncode == 1
    assert "No space left on device" in err and "its due results were kept" in err
    trials.check()
    batches = list(ArchiveBatch.objects.order_by("id"))
    assert [b.status for b in batches] == ["complete"] * 3 + ["corrupt"]
    assert not (tmp_path / batches[-1].name).exists()  # the partial object was removed
    # The disk is freed: the next run completes.
    (tmp_path / ".saves").write_text("-1000")
    trials.finish()


def test_concurrent_archivers_lose_nothing_and_never_complete_a_record_twice(tmp_path, shared_database):
    """Several processes archive one policy; the lease holder is frozen until it is taken over."""
    from retention_admin.models import CleanupLease

    trials = Trials(tmp_path)
    trials.add(due=1500, kept=30)
    first = [trials.start("--sleep", "0.05") for _ in range(2)]
    holder = ""
    deadline = time.monotonic() + 30
    while not holder and time.monotonic() < deadline:
        time.sleep(0.1)
        holder = CleanupLease.objects.filter(scope="policy:audit-30d").values_list("holder", flat=True).first() or ""
    assert holder, "no process took the lease"
    pid = int(holder.split(":")[1])
    time.sleep(0.5)
    os.kill(pid, signal.SIGSTOP)  # frozen mid-run: its 1 s lease runs out
    try:
        time.sleep(1.5)
        second = [trials.start("--sleep", "0.05") for _ in range(2)]
        # Frozen until another process has taken the lease over.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            current = CleanupLease.objects.filter(scope="policy:audit-30d").values_list("holder", flat=True).first()
            if current != holder:  # taken over (or already released again)
                break
            time.sleep(0.1)
    finally:
        os.kill(pid, signal.SIGCONT)  # wakes up without its lease
    outputs = [p.communicate(timeout=180) for p in first + second]
    codes = [p.returncode for p in first + second]

    assert set(codes) <= {0, 1, 3}, outputs
    assert 1 in codes, f"the frozen process never lost its lease (exit codes {codes}); the test tested little: {outputs}"
    lost_lease = [err for (_out, err), code in zip(outputs, codes) if code == 1]
    # Woken without its lease, the frozen process stops at its next renewal, or,
    # when it was writing a batch that the new holder had meanwhile declared
    # abandoned, when it tries to record that batch: never by deleting.
    assert all(
        "taken over by another run" in err or "marked abandoned while being written" in err for err in lost_lease
    ), lost_lease
    trials.check()
    completed = list(
        ArchivedResult.objects.filter(batch__status=ArchiveBatch.Status.COMPLETE).values_list("task_id", "batch__holder")
    )
    assert len(completed) == len(set(completed)), "a holder archived a record into two complete batches"
    trials.finish()
