"""Reconstructed history: hourly snapshots of the past, estimated, for a new install.

``snapshot_results --backfill DAYS`` cannot know the past exactly; it estimates,
and every snapshot it makes is marked ``kind="backfill"`` with estimated rows
and bytes. At each past hour ``t``:

* rows still stored that were created by ``t`` count as present (exact per
  status: one GROUP BY over the creation hour);
* rows that cleanup runs have deleted since are added back from run history:
  the rows a run deleted for a scope (a policy or the ``result_expires``
  remainder) are spread evenly over the creation window between where that
  scope's previous run left off and this run's cutoff (run time minus how long
  the scope keeps results; for a scope's first run, from the start of the
  period), and count as present from their estimated creation until the run
  that deleted them.
  Their status is known only for a policy with exactly one status; otherwise
  they are shown as ``(deleted since)``;
* bytes are rows times the average bytes per row by status measured now.

Existing measured snapshots are kept, and hours within half an hour of one are
skipped; earlier reconstructed snapshots in the window are replaced.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import models, router, transaction
from django.db.models import Count, DateTimeField
from django.db.models.functions import Coalesce, TruncHour
from django.utils import timezone
from django_celery_results.models import GroupResult, TaskResult

from .celery_config import result_expires
from .models import CleanupRun, RetentionPolicy, StorageSnapshot

HOUR = timedelta(hours=1)
DELETED = "(deleted since)"
MAX_DAYS = 366
# Creation window assumed for a scope's first recorded run (no earlier run to go by).
FIRST_WINDOW = timedelta(days=1)


@dataclass
class BackfillReport:
    created: int
    replaced: int
    skipped: int
    start: datetime
    end: datetime


def _hour_floor(value: datetime) -> datetime:
    return value.replace(minute=0, second=0, microsecond=0)


def _cumulative(model: type[models.Model], using: str, start: datetime, hours: list[datetime], by_status: bool) -> list[dict[str, int]]:
    """Rows still stored, created by each hour (by status when asked)."""
    created = Coalesce("date_created", "date_done", output_field=DateTimeField())
    rows = model._default_manager.using(using).order_by().annotate(created_at=created)
    keys = ["status"] if by_status else []
    base: dict[str, int] = defaultdict(int)
    for row in rows.filter(created_at__lt=start).values(*keys).annotate(n=Count("pk")):
        base[row.get("status", "")] += row["n"]
    per_hour: dict[datetime, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in (
        rows.filter(created_at__gte=start)
        .annotate(hour=TruncHour("created_at"))
        .values("hour", *keys)
        .annotate(n=Count("pk"))
    ):
        if row["hour"] is not None:
            per_hour[row["hour"]][row.get("status", "")] += row["n"]
    out = []
    running = dict(base)
    pending = sorted(per_hour.items())
    index = 0
    for hour in hours:
        # A row created within [h, h + 1 h) is present at every point after h + 1 h.
        while index < len(pending) and pending[index][0] + HOUR <= hour:
            for status, n in pending[index][1].items():
                running[status] = running.get(status, 0) + n
            index += 1
        out.append(dict(running))
    return out


def _deleted_back(start: datetime, hours: list[datetime]) -> list[dict[str, float]]:
    """Rows that runs deleted after each hour but that existed then (estimated)."""
    policies = {p.name: p for p in RetentionPolicy.objects.all()}
    expires = result_expires()
    runs = (
        CleanupRun.objects.filter(dry_run=False, started_at__gt=start - FIRST_WINDOW, deleted__gt=0)
        .exclude(status=CleanupRun.Status.DISPATCHED)
        .order_by("started_at")
        .values_list("started_at", "report", "options")
    )
    out: list[dict[str, float]] = [defaultdict(float) for _ in hours]
    previous: dict[str, datetime] = {}
    first = hours[0] if hours else start

    for started_at, report, options in runs:
        report = report or {}
        days = (options or {}).get("days")
        scopes: list[tuple[str, int, timedelta | None, str]] = []
        for entry in report.get("policies", []):
            policy = policies.get(entry.get("name"))
            keep = timedelta(days=days) if days else (policy.keep_for if policy else None)
            statuses = list(policy.statuses) if policy else []
            status = statuses[0] if len(statuses) == 1 else DELETED
            scopes.append((f"policy:{entry.get('name')}", int(entry.get("deleted") or 0), keep, status))
        unmatched = int((report.get("unmatched") or {}).get("deleted") or 0)
        keep = timedelta(days=days) if days else expires
        scopes.append(("remainder", unmatched, keep, DELETED))
        for scope, deleted, keep, status in scopes:
            prev = previous.get(scope)
            previous[scope] = started_at
            if not deleted or keep is None or started_at <= first:
                continue
            window_end = started_at - keep
            # A scope's first recorded run may have cleared a long backlog: spread its
            # rows over the whole period asked for rather than over a single day.
            window_start = (prev - keep) if prev is not None else min(start, window_end - FIRST_WINDOW)
            if window_end <= window_start:
                window_start = window_end - HOUR
            span = (window_end - window_start).total_seconds()
            for i, hour in enumerate(hours):
                if hour >= started_at:
                    break
                if hour <= window_start:
                    continue
                share = min(1.0, (hour - window_start).total_seconds() / span)
                out[i][status] += deleted * share
    return out


def backfill(days: int, using: str | None = None, now: datetime | None = None) -> BackfillReport:
    """Create hourly reconstructed snapshots for the last ``days`` days."""
    if not isinstance(days, int) or not 1 <= days <= MAX_DAYS:
        raise ValueError(f"--backfill takes a number of days from 1 to {MAX_DAYS}, not {days!r}.")
    using = using or router.db_for_read(TaskResult)
    end = _hour_floor(now or timezone.now())
    start = end - timedelta(days=days)
    hours = [start + i * HOUR for i in range(days * 24)]  # the last point is the hour before `end`
    records = StorageSnapshot.objects.using(router.db_for_write(StorageSnapshot))
    measured = list(
        records.filter(kind=StorageSnapshot.Kind.MEASURED, taken_at__gte=start - HOUR)
        .order_by("taken_at")
        .values_list("taken_at", flat=True)
    )
    latest = records.filter(kind=StorageSnapshot.Kind.MEASURED).order_by("-taken_at").first()
    per_row: dict[str, float] = {}
    default_per_row = 0.0
    if latest is not None:
        for status, rows in (latest.rows_by_status or {}).items():
            size = (latest.bytes_by_status or {}).get(status)
            if rows and size:
                per_row[status] = size / rows
        if latest.task_rows and latest.table_bytes:
            # Table bytes include indexes and free space: scale the result bytes to them.
            logical = sum((latest.bytes_by_status or {}).values()) or 0
            factor = latest.table_bytes / logical if logical else 1.0
            per_row = {status: value * factor for status, value in per_row.items()}
            default_per_row = latest.table_bytes / latest.task_rows

    present = _cumulative(TaskResult, using, start, hours, by_status=True)
    groups = _cumulative(GroupResult, using, start, hours, by_status=False)
    gone = _deleted_back(start, hours)

    snapshots = []
    skipped = 0
    for i, hour in enumerate(hours):
        if any(abs((taken - hour).total_seconds()) < 1800 for taken in measured):
            skipped += 1
            continue
        status_rows: dict[str, float] = defaultdict(float)
        for status, count in present[i].items():
            status_rows[status] += count
        for status, share in gone[i].items():
            status_rows[status] += share
        rows_by_status = {s: int(round(n)) for s, n in sorted(status_rows.items()) if round(n)}
        bytes_by_status = {
            s: int(round(n * per_row.get(s, default_per_row))) for s, n in rows_by_status.items()
        }
        snapshots.append(
            StorageSnapshot(
                taken_at=hour,
                kind=StorageSnapshot.Kind.BACKFILL,
                task_rows=sum(rows_by_status.values()),
                group_rows=sum(groups[i].values()),
                chord_rows=0,
                rows_by_status=rows_by_status,
                bytes_by_status=bytes_by_status,
                table_bytes=int(math.fsum(bytes_by_status.values())),
                rows_estimated=True,
                bytes_estimated=True,
                database=using,
                details={"method": "backfill", "chord_rows": "unknown"},
            )
        )
    with transaction.atomic(using=records.db):
        replaced, _ = records.filter(
            kind=StorageSnapshot.Kind.BACKFILL, taken_at__gte=start, taken_at__lt=end
        ).delete()
        records.bulk_create(snapshots, batch_size=500)
    return BackfillReport(created=len(snapshots), replaced=replaced, skipped=skipped, start=start, end=end)
