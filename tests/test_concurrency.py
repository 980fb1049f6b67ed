"""Several real cleanup processes at once: leases keep one per scope, nothing is deleted twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone
from django_celery_results.models import TaskResult

from retention_admin.models import CleanupRun

ROOT = Path(__file__).resolve().parent.parent


def database_url() -> str:
    s = connection.settings_dict
    scheme = {"postgresql": "postgres", "mysql": "mysql"}[connection.vendor]
    return f"{scheme}://{s['USER']}@{s['HOST']}:{s['PORT']}/{s['NAME']}"


@pytest.mark.django_db(transaction=True)
def test_concurrent_runs_share_nothing_and_lose_nothing():
    if connection.vendor == "sqlite":
        pytest.skip("the SQLite test database is in memory; other processes cannot see it")
    old = timezone.now() - timedelta(days=3)
    TaskResult.objects.bulk_create(
        TaskResult(task_id=f"t{i}", task_name="tasks.work", status="SUCCESS", result='"x"',
                   content_type="application/json", content_encoding="utf-8")
        for i in range(600)
    )
    TaskResult.objects.update(date_done=old)
    TaskResult.objects.create(task_id="recent", status="SUCCESS", content_type="a", content_encoding="b")

    env = {**os.environ, "DATABASE_URL": database_url(), "DJANGO_SETTINGS_MODULE": "testproject.settings"}
    procs = [
        subprocess.Popen(
            [sys.executable, "manage.py", "cleanup_results", "--json", "--batch-size", "50",
             "--sleep", "0.05"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]

    codes = [p.returncode for p in procs]
    assert set(codes) <= {0, 3}, outputs
    reports = [json.loads(out) for out, _err in outputs]
    deleted = sum(r["unmatched"]["deleted"] for r in reports)
    assert deleted == 600  # each row deleted by exactly one process
    assert set(TaskResult.objects.values_list("task_id", flat=True)) == {"recent"}
    # Runs overlapped: at least one found the remainder leased and named the holder.
    skipped = [r for r, code in zip(reports, codes) if code == 3]
    assert skipped, "the runs did not overlap; make the batches slower"
    for _out, err in (o for o, code in zip(outputs, codes) if code == 3):
        assert "another run holds the lease" in err
    assert CleanupRun.objects.count() == 3
