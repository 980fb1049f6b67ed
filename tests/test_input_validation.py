"""Numbers and ids a user gives the commands and RETENTION_ADMIN: refused before anything happens."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from datetime import timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings
from django_celery_results.models import TaskResult

from retention_admin import conf, validators
from retention_admin.checks import check_settings
from retention_admin.models import ArchiveBatch, CleanupRun, RetentionPolicy, RetentionTier

from .conftest import ids_left

DAY = timedelta(days=1)
ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.django_db
NOT_FINITE = "is not a finite number; NaN and infinity are not accepted."


def command(name: str, *args: str, **options: Any) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(name, *args, stdout=out, stderr=err, **options)
    return out.getvalue(), err.getvalue()


# -- cleanup_results -----------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        # Used to start, write archive batches, then fail with "bigint out of range".
        (["--batch-size", "99999999999999999999999"], "--batch-size must be at most 100000, not 99999999999999999999999."),
        (["--batch-size", "100001"], "--batch-size must be at most 100000, not 100001."),
        (["--sleep", "nan"], f"Error: argument --sleep: 'nan' {NOT_FINITE}"),
        (["--sleep", "inf"], f"Error: argument --sleep: 'inf' {NOT_FINITE}"),
        (["--sleep=-inf"], f"Error: argument --sleep: '-inf' {NOT_FINITE}"),
        (["--sleep", "1e999"], f"Error: argument --sleep: '1e999' {NOT_FINITE}"),
        (["--sleep", "soon"], "Error: argument --sleep: 'soon' is not a number."),
        (["--sleep", "3600.5"], "--sleep must be at most 3600 seconds (1 hour), not 3600.5."),
        (["--max-runtime", "nan"], f"Error: argument --max-runtime: 'nan' {NOT_FINITE}"),
        (["--max-runtime", "inf"], f"Error: argument --max-runtime: 'inf' {NOT_FINITE}"),
        (["--max-runtime", "-5"], "--max-runtime must be more than 0 seconds, not -5.0."),
        (["--max-runtime", "604801"], "--max-runtime must be at most 604800 seconds (7 days), not 604801.0."),
        (["--days", "36526"], "--days must be at most 36525 (100 years), not 36526."),
        (["--days", "99999999999999999999999"], "--days must be at most 36525 (100 years), not 99999999999999999999999."),
    ],
)
def test_cleanup_refuses_numbers_out_of_range_before_anything_happens(make_result, archive_dir, args, message):
    RetentionPolicy.objects.create(
        name="audit", tier=RetentionTier.objects.get(slug="daily"), priority=1, archive=True,
        task_name_pattern="audit.*", keep_for=DAY,
    )
    make_result(task_id="audit", task_name="audit.x", age=30 * DAY)
    make_result(task_id="old", age=30 * DAY)
    with pytest.raises(CommandError) as excinfo:
        command("cleanup_results", *args)
    assert str(excinfo.value) == message
    assert not CleanupRun.objects.exists()
    assert not ArchiveBatch.objects.exists()
    assert ids_left() == {"audit", "old"}


@pytest.mark.parametrize(
    "options, message",
    [
        # call_command(**options) bypasses argparse: the same refusal, from handle().
        ({"sleep": math.nan}, "--sleep must be a number of seconds from 0 to 3600 (1 hour), not nan."),
        ({"sleep": math.inf}, "--sleep must be a number of seconds from 0 to 3600 (1 hour), not inf."),
        (
            {"max_runtime": math.nan},
            "--max-runtime must be a number of seconds above 0 and at most 604800 (7 days), not nan.",
        ),
        ({"batch_size": 10**23}, "--batch-size must be at most 100000, not 100000000000000000000000."),
        ({"batch_size": 2.5}, "--batch-size must be a whole number from 1 to 100000, not 2.5."),
        ({"batch_size": True}, "--batch-size must be a whole number from 1 to 100000, not True."),
        ({"days": math.inf}, "--days must be a whole number of days from 1 to 36525 (100 years), not inf."),
    ],
)
def test_cleanup_refuses_the_same_through_call_command_keywords(make_result, options, message):
    make_result(age=30 * DAY)
    with pytest.raises(CommandError) as excinfo:
        command("cleanup_results", **options)
    assert str(excinfo.value) == message
    assert not CleanupRun.objects.exists()
    assert TaskResult.objects.count() == 1


def test_cleanup_accepts_the_bounds(make_result):
    make_result(task_id="old", age=30 * DAY)
    command("cleanup_results", "--batch-size", "100000", "--sleep", "0", "--max-runtime", "604800", "--days", "1")
    assert ids_left() == set()


def test_a_bad_number_exits_1_from_the_shell_and_an_unparsable_one_2():
    def shell(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", "cleanup_results", *args],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
            env={**os.environ, "DATABASE_URL": "sqlite:///:memory:"},
        )

    too_big = shell("--batch-size", "99999999999999999999999")
    assert too_big.returncode == 1
    assert too_big.stderr.strip() == "CommandError: --batch-size must be at most 100000, not 99999999999999999999999."
    not_a_number = shell("--sleep", "nan")
    assert not_a_number.returncode == 2  # argparse, as for any value it cannot read
    assert f"argument --sleep: 'nan' {NOT_FINITE}" in not_a_number.stderr
    assert "Traceback" not in not_a_number.stderr


# -- restore_results ------------------------------------------------------------


@pytest.fixture
def archived(make_result: Any, archive_dir: Any) -> ArchiveBatch:
    RetentionPolicy.objects.create(
        name="audit", tier=RetentionTier.objects.get(slug="daily"), priority=1, archive=True,
        task_name_pattern="audit.*", keep_for=DAY,
    )
    make_result(task_id="a0", task_name="audit.x", age=5 * DAY)
    command("cleanup_results", "--policy", "audit")
    assert ids_left() == set()
    return ArchiveBatch.objects.get()


@pytest.mark.parametrize(
    "args, options, message",
    [
        # 1e308 and inf raised OverflowError; nan was taken as "no grace".
        (["--grace-days", "1e308"], {}, "--grace-days must be at most 36525 (100 years), not 1e+308."),
        (["--grace-days", "36525.5"], {}, "--grace-days must be at most 36525 (100 years), not 36525.5."),
        (["--grace-days", "inf"], {}, f"Error: argument --grace-days: 'inf' {NOT_FINITE}"),
        (["--grace-days", "nan"], {}, f"Error: argument --grace-days: 'nan' {NOT_FINITE}"),
        ([], {"grace_days": math.nan}, "--grace-days must be a number of days from 0 to 36525 (100 years), not nan."),
        ([], {"grace_days": math.inf}, "--grace-days must be a number of days from 0 to 36525 (100 years), not inf."),
        (["--task-id", " "], {}, "--task-id must not be blank."),
    ],
)
def test_restore_refuses_a_bad_grace_or_task_id_and_restores_nothing(archived, args, options, message):
    with pytest.raises(CommandError) as excinfo:
        command("restore_results", str(archived.pk), *args, **options)
    assert str(excinfo.value) == message
    assert ids_left() == set()
    archived.refresh_from_db()
    assert archived.status == ArchiveBatch.Status.COMPLETE and archived.grace_until is None


def test_restore_accepts_the_longest_grace(archived):
    command("restore_results", str(archived.pk), "--grace-days", "36525")
    assert ids_left() == {"a0"}


# -- check_result_backend ---------------------------------------------------------


@pytest.mark.parametrize(
    "args, options, message",
    [
        (["--timeout", "nan"], {}, f"Error: argument --timeout: 'nan' {NOT_FINITE}"),
        (["--timeout", "inf"], {}, f"Error: argument --timeout: 'inf' {NOT_FINITE}"),
        (["--timeout", "300.5"], {}, "--timeout must be at most 300 seconds (5 minutes), not 300.5."),
        ([], {"timeout": math.nan}, "--timeout must be a number of seconds above 0 and at most 300 (5 minutes), not nan."),
    ],
)
def test_check_result_backend_refuses_a_bad_timeout_before_the_round_trip(monkeypatch, args, options, message):
    from retention_admin.management.commands import check_result_backend

    def no_round_trip(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the probe must not be sent")

    monkeypatch.setattr(check_result_backend, "check_backend", no_round_trip)
    with pytest.raises(CommandError) as excinfo:
        command("check_result_backend", *args, **options)
    assert str(excinfo.value) == message


# -- explain_result -----------------------------------------------------------------


@pytest.mark.parametrize("task_id", ["", "   ", "\t\n"])
def test_explain_refuses_a_blank_task_id(task_id):
    with pytest.raises(CommandError) as excinfo:
        command("explain_result", task_id)
    assert str(excinfo.value) == "TASK_ID must not be blank."


# -- RETENTION_ADMIN --------------------------------------------------------------

NUMBERS = {key: rule for key, (_default, rule) in conf.SCHEMA.items() if isinstance(rule, conf.Number)}


def setting_ids(value: dict[str, Any]) -> list[str | None]:
    with override_settings(RETENTION_ADMIN=value):
        return [m.id for m in check_settings()]


@pytest.mark.parametrize(
    "value, check_id, message",
    [
        (
            {"BATCH_SIZE": 10**30},
            "retention_admin.E004",
            "RETENTION_ADMIN['BATCH_SIZE'] must be None or a whole number from 1 to 100000, "
            "not 1000000000000000000000000000000.",
        ),
        (
            {"SLEEP_SECONDS": math.inf},
            "retention_admin.E003",
            "RETENTION_ADMIN['SLEEP_SECONDS'] must be None or a number of seconds from 0 to 3600 (1 hour), not inf.",
        ),
        (
            {"RESTORE_GRACE_DAYS": math.inf},
            "retention_admin.E003",
            "RETENTION_ADMIN['RESTORE_GRACE_DAYS'] must be a number of days from 0 to 36525 (100 years), not inf.",
        ),
        (
            {"RESTORE_GRACE_DAYS": 1e9},
            "retention_admin.E004",
            "RETENTION_ADMIN['RESTORE_GRACE_DAYS'] must be a number of days from 0 to 36525 (100 years), "
            "not 1000000000.0.",
        ),
        (
            {"MAX_RUNTIME_SECONDS": math.nan},
            "retention_admin.E003",
            "RETENTION_ADMIN['MAX_RUNTIME_SECONDS'] must be None or a number of seconds above 0 and at most "
            "604800 (7 days), not nan.",
        ),
    ],
)
def test_numeric_settings_out_of_range_fail_the_system_checks(value, check_id, message):
    with override_settings(RETENTION_ADMIN=value):
        (error,) = check_settings()
        assert (error.id, error.msg, error.level) == (check_id, message, checks.ERROR)
        with pytest.raises(SystemCheckError) as excinfo:
            call_command("check", stdout=StringIO(), stderr=StringIO())
        assert check_id in str(excinfo.value)
        # And nothing reads the value: every reader goes through get_config.
        with pytest.raises(ImproperlyConfigured, match=r"must be"):
            conf.get_config()


@pytest.mark.parametrize("key", sorted(NUMBERS))
def test_every_numeric_setting_checks_type_sign_nan_infinity_and_range(key):
    accepted = NUMBERS[key].accepted
    assert setting_ids({key: math.nan}) == ["retention_admin.E003"]
    assert setting_ids({key: math.inf}) == ["retention_admin.E003"]
    assert setting_ids({key: -math.inf}) == ["retention_admin.E003"]
    assert setting_ids({key: -1}) == ["retention_admin.E001"]
    assert setting_ids({key: True}) == ["retention_admin.E001"]
    assert setting_ids({key: str(accepted.low)}) == ["retention_admin.E001"]
    assert setting_ids({key: None}) == ([] if NUMBERS[key].optional else ["retention_admin.E001"])
    if accepted.whole:
        assert setting_ids({key: accepted.low + 0.5}) == ["retention_admin.E001"]
    if accepted.high is not None:
        assert setting_ids({key: accepted.high}) == []
        over = accepted.high + 1 if accepted.whole else accepted.high + 0.5
        assert setting_ids({key: over}) == ["retention_admin.E004"]
    low = accepted.low + 1 if accepted.low_excluded else accepted.low
    assert setting_ids({key: low}) == []


@pytest.mark.parametrize(
    "key, option",
    [
        ("BATCH_SIZE", validators.BATCH_SIZE),
        ("SLEEP_SECONDS", validators.SLEEP_SECONDS),
        ("MAX_RUNTIME_SECONDS", validators.MAX_RUNTIME_SECONDS),
        ("RESTORE_GRACE_DAYS", validators.RESTORE_GRACE_DAYS),
    ],
)
def test_a_setting_and_the_option_that_overrides_it_accept_the_same_range(key, option):
    assert NUMBERS[key].accepted is option


def test_a_setting_out_of_range_stops_a_run_before_it_starts(make_result):
    make_result(age=30 * DAY)
    with override_settings(RETENTION_ADMIN={"BATCH_SIZE": 10**30}):
        with pytest.raises(ImproperlyConfigured, match=r"BATCH_SIZE'\] must be None or a whole number from 1 to 100000"):
            command("cleanup_results")
    assert not CleanupRun.objects.exists()
    assert TaskResult.objects.count() == 1
