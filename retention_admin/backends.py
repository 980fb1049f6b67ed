"""Celery result backends that respect retention policies."""

from __future__ import annotations

from django_celery_results.backends.database import DatabaseBackend

from .models import CleanupRun


class RetentionDatabaseBackend(DatabaseBackend):  # type: ignore[misc]
    """django-celery-results' backend whose ``cleanup()`` leaves governed results alone.

    ``celery.backend_cleanup`` calls ``cleanup()``: stock django-db deletes every
    result older than ``result_expires`` in one transaction. Here it deletes, in
    batches, only the results no enabled policy governs (their policy's tier does
    the rest), plus expired GroupResults and orphaned ChordCounters, and records
    a CleanupRun.
    """

    def cleanup(self) -> None:
        from .executor import Options, Selection, run_cleanup

        run_cleanup(
            Selection(remainder=True),
            Options(trigger=CleanupRun.Trigger.BACKEND_CLEANUP),
        )
