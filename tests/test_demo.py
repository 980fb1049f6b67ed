"""The demo history generator and the demo commands (``make demo``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db.models import Count, Max, Min
from django_celery_results.models import ChordCounter, GroupResult, TaskResult

from retention_admin.models import ChordCounterSighting, RetentionPolicy
from testproject.demo.history import DEMO_POLICIES, enable_demo_policies, generate_history
from testproject.demo.management.commands import demo_superuser, load_demo_history

NOW = datetime(2025, 3, 14, 12, 0, tzinfo=UTC)


@pytest.mark.django_db
def test_history_has_the_intended_shape() -> None:
    summary = generate_history(results=2000, days=90, seed=7, now=NOW)

    assert TaskResult.objects.count() == summary.results == 2000
    dates = TaskResult.objects.aggregate(oldest=Min("date_done"), newest=Max("date_done"))
    # The generated dates were stored, not the time of the insert (auto_now).
    assert dates["newest"] <= NOW
    assert NOW - dates["newest"] < timedelta(hours=12)
    window = TaskResult.objects.exclude(task_name__startswith="compliance.")
    assert NOW - window.aggregate(m=Min("date_done"))["m"] > timedelta(days=85)
    assert NOW - window.aggregate(m=Min("date_done"))["m"] <= timedelta(days=90, minutes=1)
    assert NOW - dates["oldest"] <= timedelta(days=120, minutes=1)
    # Spread over the window, not bunched at one end.
    for low, high in ((0, 30), (30, 60), (60, 90)):
        part = window.filter(
            date_done__lte=NOW - timedelta(days=low), date_done__gt=NOW - timedelta(days=high)
        )
        assert part.count() > 300, (low, high)
    assert TaskResult.objects.values("date_done").distinct().count() > 1900

    statuses = dict(TaskResult.objects.values_list("status").annotate(n=Count("id")))
    assert statuses["SUCCESS"] > 1700
    assert statuses.get("FAILURE", 0) > 10
    assert set(statuses) >= {"SUCCESS", "FAILURE"}
    assert TaskResult.objects.values("task_name").distinct().count() >= 25
    for pattern in DEMO_POLICIES.values():
        assert TaskResult.objects.filter(task_name__startswith=pattern.rstrip("*")).exists(), (
            pattern
        )

    failure = TaskResult.objects.filter(status="FAILURE").exclude(task_name=None).first()
    assert failure is not None
    assert failure.traceback.startswith("Traceback (most recent call last):")
    assert set(json.loads(failure.result)) == {"exc_type", "exc_message", "exc_module"}
    exc_type = json.loads(failure.result)["exc_type"]
    assert any(line.split(":")[0].endswith(exc_type) for line in failure.traceback.splitlines())
    for row in TaskResult.objects.all().iterator():
        assert row.content_type == "application/json" and row.content_encoding == "utf-8"
        assert row.date_created <= row.date_done
        # date_started: django-celery-results 2.6+ (2.5 has no such column).
        if getattr(row, "date_started", None) is not None:
            assert row.date_created <= row.date_started <= row.date_done
        if row.result is not None:
            json.loads(row.result)
    assert TaskResult.objects.exclude(periodic_task_name=None).exists()
    assert GroupResult.objects.exists() and ChordCounter.objects.exists()
    assert summary.statuses == statuses


@pytest.mark.django_db
def test_same_seed_same_history() -> None:
    generate_history(results=300, days=10, seed=3, now=NOW)
    first = list(
        TaskResult.objects.order_by("task_id").values_list("task_id", "task_name", "date_done")
    )
    for model in (TaskResult, GroupResult, ChordCounter, ChordCounterSighting):
        model.objects.all().delete()
    generate_history(results=300, days=10, seed=3, now=NOW)
    again = list(
        TaskResult.objects.order_by("task_id").values_list("task_id", "task_name", "date_done")
    )
    assert first == again


@pytest.mark.django_db
def test_command_loads_and_enables_the_demo_policies() -> None:
    call_command(load_demo_history.Command(), "--results", "500", "--days", "30", stdout=_Sink())
    assert TaskResult.objects.count() == 500
    for name, pattern in DEMO_POLICIES.items():
        policy = RetentionPolicy.objects.get(name=name)
        assert policy.enabled and policy.task_name_pattern == pattern
    with pytest.raises(CommandError, match="--replace"):
        call_command(load_demo_history.Command(), "--results", "100", stdout=_Sink())
    call_command(
        load_demo_history.Command(),
        "--results",
        "100",
        "--replace",
        "--no-policies",
        stdout=_Sink(),
    )
    assert TaskResult.objects.count() == 100
    _policies, missing = enable_demo_policies()
    assert missing == []


def test_demo_superuser_refuses_outside_the_demo_settings() -> None:
    with pytest.raises(CommandError, match="demo settings"):
        call_command(demo_superuser.Command())


class _Sink:
    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


@pytest.mark.django_db
def test_dry_run_and_real_run_count_the_same_on_the_demo_history(tmp_path) -> None:
    """What `make demo` shows: every policy's dry-run figure equals the real run's."""
    import time_machine
    from django.test import override_settings

    with time_machine.travel(NOW, tick=False), override_settings(RETENTION_ADMIN={"ARCHIVE_DIR": str(tmp_path)}):
        generate_history(results=3000, days=90, seed=11, now=NOW)
        enable_demo_policies()
        dry, real = _cleanup("--dry-run"), _cleanup()
    by_name = lambda report, key: {p["name"]: p[key] for p in report["policies"]}  # noqa: E731
    assert by_name(dry, "matched") == by_name(real, "matched") == by_name(real, "deleted")
    assert dry["unmatched"]["matched"] == real["unmatched"]["deleted"]
    assert dry["totals"]["matched"] == real["totals"]["deleted"] > 0


def _cleanup(*args: str) -> dict:
    from io import StringIO

    out = StringIO()
    call_command("cleanup_results", *args, "--json", "--no-progress", stdout=out)
    return json.loads(out.getvalue())
