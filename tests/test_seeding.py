"""The seeding migration: what it creates, idempotence, reversal, the beat marker."""

from __future__ import annotations

import importlib
import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django_celery_beat.models import CrontabSchedule, PeriodicTask, PeriodicTasks

from retention_admin.models import RetentionPolicy, RetentionTier

seed_migration = importlib.import_module("retention_admin.migrations.0002_seed_schedules_and_policies")
pytestmark = pytest.mark.django_db


def historical_apps():
    executor = MigrationExecutor(connection)
    return executor.loader.project_state(
        ("retention_admin", "0002_seed_schedules_and_policies")
    ).apps


def cron(task: PeriodicTask) -> str:
    c = task.crontab
    return f"{c.minute} {c.hour} {c.day_of_month} {c.month_of_year} {c.day_of_week}"


def test_migrate_seeds_schedules_tiers_and_policies():
    tasks = {t.name: t for t in PeriodicTask.objects.select_related("crontab")}
    assert cron(tasks["celery.backend_cleanup"]) == "0 4 * * *"
    assert tasks["celery.backend_cleanup"].task == "celery.backend_cleanup"
    assert tasks["celery.backend_cleanup"].expire_seconds == 43200
    for slug, spec in [("daily", "0 2 * * *"), ("weekly", "0 3 * * 0"), ("monthly", "0 4 1 * *")]:
        task = tasks[f"retention: {slug} tier"]
        assert task.task == "retention_admin.tasks.run_tier"
        assert json.loads(task.kwargs) == {"tier": slug}
        assert cron(task) == spec
        assert RetentionTier.objects.get(slug=slug).periodic_task == task
    snapshot = tasks["retention: storage snapshot"]
    assert snapshot.task == "retention_admin.tasks.take_snapshot" and cron(snapshot) == "0 * * * *"

    policies = {p.name: p for p in RetentionPolicy.objects.all()}
    assert {name: p.enabled for name, p in policies.items()} == {
        "critical-forever": False, "compliance-90d": False, "audit-30d": False,
        "failures-7d": True, "api-6h": False, "dashboards-30m": False,
    }
    assert policies["failures-7d"].statuses == ["FAILURE"]
    assert policies["failures-7d"].keep_for == timedelta(days=7)
    assert policies["failures-7d"].task_name_pattern == ""
    assert policies["critical-forever"].keep_for is None
    assert policies["compliance-90d"].archive and policies["audit-30d"].archive
    assert policies["dashboards-30m"].keep_for == timedelta(minutes=30)
    assert policies["api-6h"].keep_for == timedelta(hours=6)
    # Every disabled policy carries an example pattern; none claims background jobs.
    assert all(p.task_name_pattern for p in policies.values() if not p.enabled)


def test_reseeding_never_overwrites_operator_edits():
    task = PeriodicTask.objects.get(name="celery.backend_cleanup")
    task.crontab = CrontabSchedule.objects.create(minute="30", hour="5")
    task.save()
    RetentionPolicy.objects.filter(name="failures-7d").update(keep_for=timedelta(days=14))
    counts = (PeriodicTask.objects.count(), RetentionPolicy.objects.count(), RetentionTier.objects.count())

    seed_migration.seed(historical_apps())

    assert cron(PeriodicTask.objects.get(name="celery.backend_cleanup")) == "30 5 * * *"
    assert RetentionPolicy.objects.get(name="failures-7d").keep_for == timedelta(days=14)
    assert counts == (PeriodicTask.objects.count(), RetentionPolicy.objects.count(), RetentionTier.objects.count())


def test_reverse_removes_only_what_is_still_as_seeded_and_bumps_the_marker():
    edited = PeriodicTask.objects.get(name="retention: weekly tier")
    edited.crontab = CrontabSchedule.objects.create(minute="15", hour="1", day_of_week="6")
    edited.save()
    RetentionPolicy.objects.filter(name="api-6h").update(task_name_pattern="myapi.*")
    PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": "2000-01-01T00:00:00Z"})

    seed_migration.unseed(historical_apps())

    assert set(RetentionPolicy.objects.values_list("name", flat=True)) == {"api-6h"}
    # daily keeps api-6h, so it and its schedule stay; weekly's schedule was edited.
    assert set(RetentionTier.objects.values_list("slug", flat=True)) == {"daily"}
    assert set(PeriodicTask.objects.values_list("name", flat=True)) == {
        "retention: daily tier", "retention: weekly tier",
    }
    assert PeriodicTasks.last_change().year > 2000

    # Forward again: what was removed comes back, what stayed is untouched.
    seed_migration.seed(historical_apps())
    assert RetentionPolicy.objects.get(name="api-6h").task_name_pattern == "myapi.*"
    assert RetentionPolicy.objects.count() == 6
    assert cron(PeriodicTask.objects.get(name="retention: weekly tier")) == "15 1 * * 6"
    # The re-created weekly tier links to the operator's edited schedule.
    assert RetentionTier.objects.get(slug="weekly").periodic_task == PeriodicTask.objects.get(
        name="retention: weekly tier"
    )


def test_forward_seed_bumps_the_beat_marker():
    PeriodicTask.objects.filter(name="celery.backend_cleanup").delete()
    PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": "2000-01-01T00:00:00Z"})
    seed_migration.seed(historical_apps())
    assert PeriodicTask.objects.filter(name="celery.backend_cleanup").exists()
    assert PeriodicTasks.last_change().year > 2000


def test_migration_depends_on_a_specific_beat_migration():
    deps = seed_migration.Migration.dependencies
    assert ("django_celery_beat", "0019_alter_periodictasks_options") in deps
    assert all(name != "__latest__" for _app, name in deps)


def test_models_and_migrations_agree():
    out = StringIO()
    call_command("makemigrations", "retention_admin", "--check", "--dry-run", stdout=out)
    assert "No changes detected" in out.getvalue()
