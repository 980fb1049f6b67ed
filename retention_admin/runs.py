"""Run records while they run: progress saved as it goes, and runs that died closed.

A run saves its counts (and a heartbeat, by the database's clock) after every
batch, at most once every ``PROGRESS_SECONDS``, so a run killed halfway (SIGKILL,
OOM, a lost worker) leaves the counts it had committed, not zeros. A run whose
heartbeat is older than its lease's length, and that holds no live lease, cannot
be running: ``close_abandoned`` marks it ``abandoned``. The next cleanup run and
the hourly storage snapshot call it; nothing else writes to a running run's row.
"""

from __future__ import annotations

import time
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from .leases import database_now, database_now_plus
from .models import CleanupLease, CleanupRun

# Seconds between two progress saves of one run (each is one UPDATE of its row).
PROGRESS_SECONDS = 2.0


class ProgressSaver:
    """Saves a running run's counts now and then; never fails the run."""

    def __init__(self, run: CleanupRun, using: str):
        self.run, self.using = run, using
        self.saved_at = time.monotonic()

    def __call__(self, totals: dict[str, int], *, force: bool = False) -> None:
        if not force and time.monotonic() - self.saved_at < PROGRESS_SECONDS:
            return
        self.saved_at = time.monotonic()
        # Its own savepoint: inside a caller's transaction a failed save must not
        # break the transaction the run's work is using.
        with transaction.atomic(using=self.using):
            CleanupRun.objects.using(self.using).filter(pk=self.run.pk, status=CleanupRun.Status.RUNNING).update(
                heartbeat_at=database_now(self.using), **totals
            )


def close_abandoned(using: str, lease_seconds: float) -> int:
    """Mark ``abandoned`` every run left ``running`` by a process that is gone.

    Gone: no heartbeat (nor start, for a run that died before its first one) for
    longer than ``lease_seconds`` by the database's clock, and no live lease held
    by its process. Its counts stay as it last saved them.
    """
    stale = database_now_plus(using, -lease_seconds)
    live_holders = CleanupLease.objects.using(using).filter(expires_at__gt=database_now(using)).values("holder")
    candidates = (
        CleanupRun.objects.using(using)
        .filter(status=CleanupRun.Status.RUNNING, dry_run__in=[False, True])
        .filter(Q(heartbeat_at__lt=stale) | Q(heartbeat_at__isnull=True, started_at__lt=stale))
        .exclude(holder__in=live_holders)
    )
    now = timezone.now()
    closed = 0
    for run in candidates.only("pk", "started_at", "notes"):
        closed += (
            CleanupRun.objects.using(using)
            .filter(pk=run.pk, status=CleanupRun.Status.RUNNING)
            .update(
                status=CleanupRun.Status.ABANDONED,
                finished_at=now,
                error=(
                    "The process running this cleanup stopped without finishing (killed, out of "
                    "memory, or its worker lost); the counts are those it had saved. The next run "
                    "continues where it stopped."
                ),
                notes=[*(run.notes or []), f"closed as abandoned by a later run at {now.isoformat()}"],
            )
        )
    return closed


def progress_totals(results: list[Any]) -> dict[str, int]:
    """matched/deleted/archived/bytes summed over scope results (ScopeResult-like)."""
    return {
        name: sum(getattr(result, name) for result in results) for name in ("matched", "deleted", "archived", "bytes")
    }
