"""A django-celery-beat scheduler that keeps what operators set in the admin."""

from __future__ import annotations

from typing import Any

from django_celery_beat.models import PeriodicTask
from django_celery_beat.schedulers import DatabaseScheduler

BACKEND_CLEANUP = "celery.backend_cleanup"


class RetentionScheduler(DatabaseScheduler):  # type: ignore[misc]
    """DatabaseScheduler that creates ``celery.backend_cleanup`` only when it is missing.

    Stock ``DatabaseScheduler.install_default_entries`` runs ``update_or_create`` on
    every beat start, resetting the entry to 04:00 daily whatever the admin says.
    """

    def install_default_entries(self, data: Any) -> None:
        conf = self.app.conf
        if not conf.result_expires or self.app.backend.supports_autoexpire:
            return
        if PeriodicTask.objects.filter(name=BACKEND_CLEANUP).exists():
            return
        super().install_default_entries(data)
