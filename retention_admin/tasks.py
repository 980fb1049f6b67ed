"""Celery tasks: thin wrappers around the executor and the snapshot code."""

from __future__ import annotations

from typing import Any

from celery import group, shared_task

from . import conf
from .executor import Options, Selection, run_cleanup
from .models import CleanupRun, RetentionPolicy, RetentionTier


@shared_task(name="retention_admin.tasks.run_tier", ignore_result=False)
def run_tier(tier: str, dry_run: bool = False) -> dict[str, Any]:
    """Apply the policies of one tier.

    On workers, fan out one ``run_policy`` per policy (each under its own lease), so
    several workers share a large tier. Run in-process when fan-out is off or tasks
    run eagerly.
    """
    app = run_tier.app
    if not conf.get_config().fan_out or app.conf.task_always_eager:
        run = run_cleanup(
            Selection(tiers=[tier]), Options(dry_run=dry_run, trigger=CleanupRun.Trigger.TASK)
        )
        return dict(run.report)
    tier_obj = RetentionTier.objects.filter(slug=tier).first()
    if tier_obj is None:
        known = ", ".join(RetentionTier.objects.values_list("slug", flat=True))
        raise ValueError(f"No retention tier {tier!r}; known tiers: {known or 'none'}.")
    names = list(
        RetentionPolicy.objects.in_precedence_order()
        .filter(tier=tier_obj)
        .values_list("name", flat=True)
    )
    parent = CleanupRun.objects.create(
        trigger=CleanupRun.Trigger.TASK,
        tier=tier_obj,
        dry_run=dry_run,
        status=CleanupRun.Status.DISPATCHED,
        notes=[f"dispatched run_policy for {', '.join(names) or 'no enabled policy'}"],
        options={"tiers": [tier], "policies": names},
    )
    from .redis_scan import redis_backend

    redis_configured = redis_backend(app) is not None
    if names:
        # The workers share the database part; Redis is scanned once, below, not once per policy.
        only_database = {"backend": "database"} if redis_configured else {}
        group(
            run_policy.s(name, dry_run=dry_run, parent=parent.pk, **only_database) for name in names
        ).apply_async()
    redis_run = None
    if names and redis_configured:
        redis_run = run_cleanup(
            Selection(tiers=[tier]),
            Options(dry_run=dry_run, trigger=CleanupRun.Trigger.TASK, parent=parent, backend="redis"),
        )
    return {
        "run": parent.pk,
        "status": parent.status,
        "policies": names,
        "redis": dict(redis_run.report) if redis_run else None,
    }


@shared_task(name="retention_admin.tasks.run_policy", ignore_result=False)
def run_policy(
    policy: str, dry_run: bool = False, parent: int | None = None, backend: str = "all"
) -> dict[str, Any]:
    """Apply one policy under its own lease (``backend``: "database", "redis" or "all")."""
    parent_run = CleanupRun.objects.filter(pk=parent).first() if parent else None
    run = run_cleanup(
        Selection(policies=[policy]),
        Options(dry_run=dry_run, trigger=CleanupRun.Trigger.TASK, parent=parent_run, backend=backend),
    )
    return dict(run.report)


@shared_task(name="retention_admin.tasks.take_snapshot", ignore_result=False)
def take_snapshot() -> int:
    """Record the size of the result store and the result backend's health; returns the snapshot id."""
    from django.db import router

    from . import conf
    from .runs import close_abandoned
    from .snapshots import take_snapshot as take

    # Hourly, whatever else runs: a run whose process died is closed within the hour.
    close_abandoned(router.db_for_write(CleanupRun), conf.get_config().lease_seconds)
    return take(health=True).pk
