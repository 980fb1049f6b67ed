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


def _sentences_end_once(message: str) -> bool:
    return ".." not in message.replace("...", "")


def test_a_failing_run_still_prints_its_json_report_then_fails(make_result):
    make_result(task_id="old", age=3 * DAY)
    make_result(task_id="fail", status="FAILURE", age=8 * DAY)
    from retention_admin.models import RetentionPolicy

    RetentionPolicy.objects.filter(name="failures-7d").update(task_name_pattern="[oops")
    out = StringIO()
    with pytest.raises(CommandError) as excinfo:
        call_command("cleanup_results", "--json", stdout=out, stderr=StringIO())
    run = CleanupRun.objects.get()
    report = json.loads(out.getvalue())
    assert report == run.report
    assert report["run"] == run.pk and report["status"] == "failed"
    assert str(excinfo.value).startswith(f"Cleanup run #{run.pk} failed: ")
    assert ids_left() == {"old", "fail"}


def test_a_failing_database_batch_says_nothing_after_it_was_deleted(make_result):
    make_result(task_id="fail", status="FAILURE", age=8 * DAY)
    from retention_admin.models import RetentionPolicy

    RetentionPolicy.objects.filter(name="failures-7d").update(task_name_pattern="[oops")
    with pytest.raises(CommandError) as excinfo:
        cleanup()
    message = str(excinfo.value)
    run = CleanupRun.objects.get()
    assert message.startswith(f"Cleanup run #{run.pk} failed: ")
    assert message.endswith(
        " Nothing after the failing batch was deleted; before it, 0 database results deleted. "
        "See the run in the admin for the full error."
    )
    assert _sentences_end_once(message)


def test_a_failing_scope_says_what_the_rest_of_the_run_did(make_result, tmp_path):
    from django.test import override_settings

    from retention_admin.models import RetentionPolicy

    # An archive policy with nowhere to archive fails on its own; the others go on.
    RetentionPolicy.objects.filter(name="audit-30d").update(enabled=True, task_name_pattern="audit.*")
    make_result(task_id="audit", task_name="audit.x", age=60 * DAY)
    make_result(task_id="old", age=3 * DAY)
    with override_settings(RETENTION_ADMIN={"ARCHIVE_DIR": str(tmp_path / "missing")}):
        with pytest.raises(CommandError) as excinfo:
            cleanup()
    message = str(excinfo.value)
    assert "Its due results were kept. The rest of the run went ahead: 1 database result deleted. See " in message
    assert "Nothing after the failing batch" not in message
    assert _sentences_end_once(message)
    assert ids_left() == {"audit"}


def test_a_failure_in_the_redis_part_says_the_database_part_completed(make_result, monkeypatch):
    from retention_admin import redis_scan, snapshots

    class Broken:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def run(self) -> None:
            raise RuntimeError("the enforcer broke")

    monkeypatch.setattr(redis_scan, "redis_backend", lambda: object())
    monkeypatch.setattr(redis_scan, "Enforcer", Broken)
    # The snapshot after a run would measure the (pretend) Redis server too.
    monkeypatch.setattr(snapshots, "take_snapshot", lambda *args, **kwargs: None)
    make_result(task_id="old", age=3 * DAY)
    with pytest.raises(CommandError) as excinfo:
        cleanup()
    message = str(excinfo.value)
    assert message.endswith(
        "RuntimeError: the enforcer broke. The database part had completed (1 database result deleted); "
        "the Redis part stopped at the error. See the run in the admin for the full error."
    )
    assert "Nothing after the failing batch" not in message
    assert ids_left() == set()
