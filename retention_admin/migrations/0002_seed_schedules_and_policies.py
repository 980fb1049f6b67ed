"""Seed the default schedules, tiers and policies.

Created only when absent (looked up by name, never overwritten, so re-running
keeps what an operator edited); the reverse removes only what is still exactly
as seeded. Historical models skip ``PeriodicTask.save()``, so django-celery-beat's
change marker is bumped here, or a running DatabaseScheduler would not notice.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from django.db import migrations
from django.utils import timezone

CRON_FIELDS = ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")

PERIODIC_TASKS: list[dict[str, Any]] = [
    {
        "name": "celery.backend_cleanup",
        "task": "celery.backend_cleanup",
        "cron": "0 4 * * *",
        "kwargs": {},
        "expire_seconds": 12 * 3600,
        "description": "",
    },
    {
        "name": "retention: daily tier",
        "task": "retention_admin.tasks.run_tier",
        "cron": "0 2 * * *",
        "kwargs": {"tier": "daily"},
        "expire_seconds": None,
        "description": "Runs the retention policies of the daily tier.",
    },
    {
        "name": "retention: weekly tier",
        "task": "retention_admin.tasks.run_tier",
        "cron": "0 3 * * 0",
        "kwargs": {"tier": "weekly"},
        "expire_seconds": None,
        "description": "Runs the retention policies of the weekly tier.",
    },
    {
        "name": "retention: monthly tier",
        "task": "retention_admin.tasks.run_tier",
        "cron": "0 4 1 * *",
        "kwargs": {"tier": "monthly"},
        "expire_seconds": None,
        "description": "Runs the retention policies of the monthly tier.",
    },
    {
        "name": "retention: storage snapshot",
        "task": "retention_admin.tasks.take_snapshot",
        "cron": "0 * * * *",
        "kwargs": {},
        "expire_seconds": None,
        "description": "Records the size of the result store for the growth charts.",
    },
]

TIERS: list[dict[str, Any]] = [
    {"slug": "daily", "name": "Daily", "periodic_task": "retention: daily tier"},
    {"slug": "weekly", "name": "Weekly", "periodic_task": "retention: weekly tier"},
    {"slug": "monthly", "name": "Monthly", "periodic_task": "retention: monthly tier"},
]

# The common retention matrix. Background jobs (24 hours, Celery's default) are the
# remainder no policy governs: they follow result_expires through backend_cleanup.
POLICIES: list[dict[str, Any]] = [
    {
        "name": "critical-forever",
        "priority": 10,
        "tier": "daily",
        "task_name_pattern": "critical.*",
        "statuses": [],
        "keep_for": None,
        "archive": False,
        "enabled": False,
        "description": "Critical records are kept forever. Set the pattern to your tasks, then enable.",
    },
    {
        "name": "compliance-90d",
        "priority": 20,
        "tier": "monthly",
        "task_name_pattern": "compliance.*",
        "statuses": [],
        "keep_for": timedelta(days=90),
        "archive": True,
        "enabled": False,
        "description": "Compliance data: 90 days, archived before deletion. Set the pattern, then enable.",
    },
    {
        "name": "audit-30d",
        "priority": 30,
        "tier": "weekly",
        "task_name_pattern": "audit.*",
        "statuses": [],
        "keep_for": timedelta(days=30),
        "archive": True,
        "enabled": False,
        "description": "Audit logs: 30 days, archived before deletion. Set the pattern, then enable.",
    },
    {
        "name": "failures-7d",
        "priority": 40,
        "tier": "daily",
        "task_name_pattern": "",
        "statuses": ["FAILURE"],
        "keep_for": timedelta(days=7),
        "archive": False,
        "enabled": True,
        "description": "Failed results of any task are kept 7 days, long enough to investigate.",
    },
    {
        "name": "api-6h",
        "priority": 50,
        "tier": "daily",
        "task_name_pattern": "api.*",
        "statuses": [],
        "keep_for": timedelta(hours=6),
        "archive": False,
        "enabled": False,
        "description": "API responses: 6 hours. Set the pattern to your tasks, then enable.",
    },
    {
        "name": "dashboards-30m",
        "priority": 60,
        "tier": "daily",
        "task_name_pattern": "dashboard.*",
        "statuses": [],
        "keep_for": timedelta(minutes=30),
        "archive": False,
        "enabled": False,
        "description": "Real-time dashboards: 30 minutes. Set the pattern to your tasks, then enable.",
    },
]

POLICY_FIELDS = ("priority", "task_name_pattern", "statuses", "keep_for", "archive", "enabled",
                 "description", "min_result_bytes")


def _cron(spec: str) -> dict[str, str]:
    return dict(zip(CRON_FIELDS, spec.split()))


def _bump_beat_marker(apps: Any) -> None:
    PeriodicTasks = apps.get_model("django_celery_beat", "PeriodicTasks")
    PeriodicTasks.objects.update_or_create(ident=1, defaults={"last_update": timezone.now()})


def _crontab(apps: Any, spec: str) -> Any:
    from django_celery_beat.models import crontab_schedule_celery_timezone

    CrontabSchedule = apps.get_model("django_celery_beat", "CrontabSchedule")
    fields = {**_cron(spec), "timezone": crontab_schedule_celery_timezone()}
    existing = CrontabSchedule.objects.filter(**fields).order_by("pk").first()
    return existing or CrontabSchedule.objects.create(**fields)


def seed(apps: Any, schema_editor: Any = None) -> None:
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    RetentionTier = apps.get_model("retention_admin", "RetentionTier")
    RetentionPolicy = apps.get_model("retention_admin", "RetentionPolicy")
    created = False
    for spec in PERIODIC_TASKS:
        if PeriodicTask.objects.filter(name=spec["name"]).exists():
            continue
        PeriodicTask.objects.create(
            name=spec["name"],
            task=spec["task"],
            crontab=_crontab(apps, spec["cron"]),
            kwargs=json.dumps(spec["kwargs"]),
            expire_seconds=spec["expire_seconds"],
            description=spec["description"],
            enabled=True,
        )
        created = True
    for spec in TIERS:
        _tier, made = RetentionTier.objects.get_or_create(
            slug=spec["slug"],
            defaults={
                "name": spec["name"],
                "periodic_task": PeriodicTask.objects.filter(name=spec["periodic_task"]).first(),
            },
        )
    tiers = {tier.slug: tier for tier in RetentionTier.objects.all()}
    for spec in POLICIES:
        if spec["tier"] not in tiers:
            continue  # the operator removed this tier; do not bring it back through a policy
        RetentionPolicy.objects.get_or_create(
            name=spec["name"],
            defaults={
                **{field: spec.get(field) for field in POLICY_FIELDS},
                "tier": tiers[spec["tier"]],
            },
        )
    if created:
        _bump_beat_marker(apps)


def _periodic_task_as_seeded(task: Any, spec: dict[str, Any]) -> bool:
    if task.crontab is None or task.interval_id or task.solar_id or task.clocked_id:
        return False
    try:
        kwargs = json.loads(task.kwargs or "{}")
    except ValueError:
        return False
    return (
        task.task == spec["task"]
        and kwargs == spec["kwargs"]
        and json.loads(task.args or "[]") == []
        and task.enabled
        and task.expire_seconds == spec["expire_seconds"]
        and all(getattr(task.crontab, f) == v for f, v in _cron(spec["cron"]).items())
    )


def unseed(apps: Any, schema_editor: Any = None) -> None:
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    RetentionTier = apps.get_model("retention_admin", "RetentionTier")
    RetentionPolicy = apps.get_model("retention_admin", "RetentionPolicy")
    for spec in POLICIES:
        policy = RetentionPolicy.objects.filter(name=spec["name"]).select_related("tier").first()
        if policy is None or policy.tier.slug != spec["tier"]:
            continue
        if all(getattr(policy, field) == spec.get(field) for field in POLICY_FIELDS):
            policy.delete()
    removed = False
    for spec in TIERS:
        tier = RetentionTier.objects.filter(slug=spec["slug"]).select_related("periodic_task").first()
        if tier is None or tier.name != spec["name"] or RetentionPolicy.objects.filter(tier=tier).exists():
            continue
        task = tier.periodic_task
        tier.delete()
        task_spec = next(s for s in PERIODIC_TASKS if s["name"] == spec["periodic_task"])
        if task is not None and task.name == task_spec["name"] and _periodic_task_as_seeded(task, task_spec):
            task.delete()
            removed = True
    for spec in PERIODIC_TASKS:
        if spec["task"] == "retention_admin.tasks.run_tier":
            continue  # handled with its tier above
        task = PeriodicTask.objects.filter(name=spec["name"]).select_related("crontab").first()
        if task is not None and _periodic_task_as_seeded(task, spec):
            task.delete()
            removed = True
    if removed:
        _bump_beat_marker(apps)


class Migration(migrations.Migration):
    dependencies = [
        ("retention_admin", "0001_initial"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(seed, unseed)]
