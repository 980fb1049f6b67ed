"""A django-celery-beat scheduler that keeps what operators set in the admin."""

from __future__ import annotations

import importlib
import json
from typing import Any

from celery import Celery
from django.apps import apps
from django_celery_beat.models import PeriodicTask
from django_celery_beat.schedulers import DatabaseScheduler

from .backends import RetentionDatabaseBackend, RetentionRedisMixin

BACKEND_CLEANUP = "celery.backend_cleanup"

# The seeding migration says what celery.backend_cleanup looks like (crontab, expiry);
# beat recreates it with exactly those values, so the two cannot drift apart and the
# reverse migration recognises a recreated entry as seeded.
_seeding = importlib.import_module("retention_admin.migrations.0002_seed_schedules_and_policies")
BACKEND_CLEANUP_SPEC: dict[str, Any] = next(
    spec for spec in _seeding.PERIODIC_TASKS if spec["name"] == BACKEND_CLEANUP
)


def needs_backend_cleanup(app: Celery) -> bool:
    """Whether ``celery.backend_cleanup`` has work to do for the app's result backend."""
    backend = app.backend
    if isinstance(backend, RetentionRedisMixin):
        # Redis expires keys itself (supports_autoexpire), so stock beat never
        # schedules backend_cleanup. Ours relies on it: cleanup() gives the keys no
        # policy governs the TTL result_expires (result_failure_expires for
        # failures) sets, deleting those already past it, when they were stored
        # without it: policies unreadable at write time, a hold that ended, a
        # policy disabled since.
        return bool(backend.expires or backend.failure_expires)
    if not app.conf.result_expires:
        return False  # results no policy governs are kept: nothing to expire
    # Our database backend's cleanup() is the one place the remainder expires;
    # for any other backend, do what stock Celery beat does.
    return isinstance(backend, RetentionDatabaseBackend) or not backend.supports_autoexpire


class RetentionScheduler(DatabaseScheduler):  # type: ignore[misc]
    """DatabaseScheduler that creates ``celery.backend_cleanup`` only when it is missing.

    Stock ``DatabaseScheduler.install_default_entries`` runs ``update_or_create`` on
    every beat start, resetting the entry to 04:00 daily whatever the admin says.
    """

    def install_default_entries(self, data: Any) -> None:
        if not needs_backend_cleanup(self.app):
            return
        # Present means the operator's: its schedule, expiry and enabled flag stay as they are.
        if PeriodicTask.objects.filter(name=BACKEND_CLEANUP).exists():
            return
        spec = BACKEND_CLEANUP_SPEC
        # get_or_create, not create: another beat starting at the same moment may win.
        task, created = PeriodicTask.objects.get_or_create(
            name=BACKEND_CLEANUP,
            defaults={
                "task": spec["task"],
                "crontab": _seeding._crontab(apps, spec["cron"]),
                "kwargs": json.dumps(spec["kwargs"]),
                "expire_seconds": spec["expire_seconds"],
                "description": spec["description"],
                "enabled": True,
            },
        )
        if created and task.enabled:
            # As stock does: the entry is in this beat's schedule from the start
            # (PeriodicTask.save() has bumped the change marker for other beats).
            self.schedule[BACKEND_CLEANUP] = self.Entry(task, app=self.app)
