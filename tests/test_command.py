from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from django_celery_results.models import TaskResult

from retention_admin.models import CleanupLease, CleanupRun

from .conftest import ids_left

DAY = timedelta(days=1)
ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.django_db


def cleanup(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("cleanup_results", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_json_output_is_exactly_the_documented_object(make_result):
    make_result(task_id="old", age=3 * DAY, result='"abc"')
    make_result(task_id="fail", status="FAILURE", age=8 * DAY)

    out, _ = cleanup("--json")

    report = json.loads(out)
    assert list(report) == [
        "run", "dry_run", "status", "duration_s", "policies", "unmatched", "groups",
        "chord_counters", "redis", "totals",
    ]
    run = CleanupRun.objects.get()
    assert report["run"] == run.pk
    assert report["dry_run"] is False and report["status"] == "succeeded"
    assert report["policies"] == [
        {
            "name": "failures-7d", "tier": "daily", "matched": 1, "deleted": 1, "archived": 0,
            "bytes": report["policies"][0]["bytes"],
        }
    ]
    assert report["policies"][0]["bytes"] > 200
    assert report["unmatched"] == {"matched": 1, "deleted": 1}
    assert report["groups"] == {"deleted": 0} and report["chord_counters"] == {"deleted": 0}
    assert report["redis"] is None
    assert report["totals"]["matched"] == 2 and report["totals"]["deleted"] == 2
    assert ids_left() == set()


def test_human_output_is_a_table(make_result):
    make_result(age=3 * DAY)
    out, _ = cleanup("--dry-run")
    lines = out.splitlines()
    assert lines[0].split() == ["Policy", "Tier", "Would", "go", "Deleted", "Archived", "Size"]
    assert lines[2].split()[:5] == ["failures-7d", "daily", "0", "0", "0"]
    assert lines[3].split()[:4] == ["(unmatched:", "result_expires)", "-", "1"]
    assert lines[-1].startswith("Dry run #") and "(nothing was changed)" in lines[-1]
    assert TaskResult.objects.count() == 1


def test_policy_option_is_repeatable(make_result):
    make_result(task_id="fail", status="FAILURE", age=8 * DAY)
    make_result(task_id="ok", age=8 * DAY)
    out, _ = cleanup("--policy", "failures-7d", "--json")
    assert [p["name"] for p in json.loads(out)["policies"]] == ["failures-7d"]
    assert ids_left() == {"ok"}


def test_days_batch_size_sleep_and_database_options(make_result):
    for i in range(5):
        make_result(task_id=f"t{i}", age=3 * DAY)
    out, _ = cleanup("--days", "2", "--batch-size", "2", "--sleep", "0", "--database", "default", "--json")
    assert json.loads(out)["totals"]["deleted"] == 5
    run = CleanupRun.objects.get()
    assert run.options["batch_size"] == 2 and run.options["days"] == 2
    assert run.database == "default"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--days", "0"], "--days must be 1 or more, not 0."),
        (["--days", "-3"], "--days must be 1 or more, not -3."),
        (["--days", "99999999"], "--days must be at most 36525 (100 years), not 99999999."),
        (["--batch-size", "0"], "--batch-size must be 1 or more, not 0."),
        (["--sleep", "-1"], "--sleep must be 0 or more seconds, not -1.0."),
        (["--max-runtime", "0"], "--max-runtime must be more than 0 seconds, not 0.0."),
        (["--database", "elsewhere"], "Unknown database alias 'elsewhere'; known aliases: default."),
        (["--tier", "hourly"], "No retention tier 'hourly'; known tiers: daily, monthly, weekly."),
        (["--policy", "nope"], "No retention policy named 'nope'; known policies: "),
        (["--backend", "redis"], "--backend redis: no Redis result backend is configured"),
    ],
)
def test_bad_arguments_give_a_sentence_and_change_nothing(make_result, args, message):
    make_result(age=30 * DAY)
    with pytest.raises(CommandError) as excinfo:
        cleanup(*args)
    assert str(excinfo.value).startswith(message)
    assert TaskResult.objects.count() == 1
    assert not CleanupRun.objects.exists()


def test_lease_held_elsewhere_exits_with_status_3(make_result):
    make_result(age=3 * DAY)
    CleanupLease.objects.create(
        scope="policy:failures-7d", holder="web-2:77:beef", expires_at=timezone.now() + DAY
    )
    with pytest.raises(CommandError) as excinfo:
        cleanup("--json")
    assert excinfo.value.returncode == 3
    assert "policy:failures-7d" in str(excinfo.value)
    assert ids_left() == set()  # the remainder still ran


class Terminal(StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_only(make_result):
    for i in range(5):
        make_result(task_id=f"t{i}", age=3 * DAY)
    _, err = cleanup()
    assert err == ""  # StringIO is not a terminal

    for i in range(5):
        make_result(task_id=f"u{i}", age=3 * DAY)
    tty = Terminal()
    call_command("cleanup_results", "--batch-size", "2", stdout=StringIO(), stderr=tty)
    assert "unmatched: 100%" in tty.getvalue() and "5/5" in tty.getvalue()

    make_result(task_id="v", age=3 * DAY)
    quiet = Terminal()
    call_command("cleanup_results", "--no-progress", stdout=StringIO(), stderr=quiet)
    assert quiet.getvalue() == ""


def test_command_line_exit_status_and_stderr_for_bad_input():
    # A real process: what a shell script sees.
    proc = subprocess.run(
        [sys.executable, "manage.py", "cleanup_results", "--days", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "DATABASE_URL": "sqlite:///:memory:"},
    )
    assert proc.returncode == 1
    assert "--days must be 1 or more, not 0." in proc.stderr


def test_a_failing_run_is_recorded_and_reported(make_result):
    make_result(task_id="fail", status="FAILURE", age=8 * DAY)
    # A pattern that bypassed validation (edited in the database by hand).
    from retention_admin.models import RetentionPolicy

    RetentionPolicy.objects.filter(name="failures-7d").update(task_name_pattern="[oops")
    with pytest.raises(CommandError) as excinfo:
        cleanup()
    run = CleanupRun.objects.get()
    assert str(excinfo.value).startswith(f"Cleanup run #{run.pk} failed: ")
    assert "never closed" in str(excinfo.value)
    assert run.status == "failed" and "GlobError" in run.error
    assert ids_left() == {"fail"}
    assert CleanupLease.objects.filter(holder="").count() == CleanupLease.objects.count()  # released
