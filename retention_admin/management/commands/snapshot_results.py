"""``manage.py snapshot_results``: record the size of the result store now (and, optionally, its past)."""

from __future__ import annotations

import json as jsonlib
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from ...backfill import MAX_DAYS, backfill
from ...report import human_bytes
from ...snapshots import take_snapshot


class Command(BaseCommand):
    help = (
        "Record a storage snapshot of the Celery result store (rows by status and task name, "
        "table and index bytes, Redis memory). With --backfill DAYS, also reconstruct hourly "
        "estimates of the past DAYS days from the stored rows and the cleanup run history."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--backfill", type=int, metavar="DAYS", default=None,
            help=f"Also reconstruct hourly snapshots of the last DAYS days (1-{MAX_DAYS}), marked as estimates.",
        )
        parser.add_argument("--database", metavar="ALIAS", default=None, help="Database holding the results.")
        parser.add_argument(
            "--health", action="store_true",
            help="Also check the result backend with a round trip and record the outcome.",
        )
        parser.add_argument("--json", action="store_true", help="Print one JSON object.")

    def handle(
        self, *, backfill: int | None, database: str | None, health: bool, json: bool, **options: Any
    ) -> None:
        if backfill is not None and not 1 <= backfill <= MAX_DAYS:
            raise CommandError(f"--backfill takes a number of days from 1 to {MAX_DAYS}, not {backfill}.")
        if database is not None and database not in connections.settings:
            known = ", ".join(sorted(connections.settings))
            raise CommandError(f"Unknown database alias {database!r}; known aliases: {known}.")
        snapshot = take_snapshot(database, health=health)
        report = None
        if backfill is not None:
            report = backfill_history(backfill, database)
        data: dict[str, Any] = {
            "snapshot": snapshot.pk,
            "taken_at": snapshot.taken_at.isoformat(),
            "task_rows": snapshot.task_rows,
            "rows_estimated": snapshot.rows_estimated,
            "rows_by_status": snapshot.rows_by_status,
            "group_rows": snapshot.group_rows,
            "chord_rows": snapshot.chord_rows,
            "table_bytes": snapshot.table_bytes,
            "bytes_estimated": snapshot.bytes_estimated,
            "redis": snapshot.redis,
            "alerts": snapshot.alerts,
            "duration_s": snapshot.duration_s,
        }
        if snapshot.health is not None:
            data["health"] = snapshot.health
        if report is not None:
            data["backfill"] = {
                "created": report.created, "replaced": report.replaced, "skipped": report.skipped,
                "from": report.start.isoformat(), "to": report.end.isoformat(),
            }
        if json:
            self.stdout.write(jsonlib.dumps(data))
            return
        about = "about " if snapshot.rows_estimated else ""
        size = "unknown size" if snapshot.table_bytes is None else human_bytes(snapshot.table_bytes)
        self.stdout.write(
            f"Snapshot {snapshot.pk} at {snapshot.taken_at:%Y-%m-%d %H:%M:%S %Z}: {about}{snapshot.task_rows:,} task results"
            f"{' (estimate from database statistics and a sample)' if snapshot.rows_estimated else ''}, "
            f"{size} table + indexes{' (estimate)' if snapshot.bytes_estimated else ''}, "
            f"{snapshot.group_rows:,} group results, {snapshot.chord_rows:,} chord counters; "
            f"took {snapshot.duration_s:.2f} s."
        )
        if snapshot.redis:
            self.stdout.write(f"Redis: {jsonlib.dumps(snapshot.redis)}")
        for alert in snapshot.alerts:
            self.stderr.write(f"Warning: {alert['message']}")
        if snapshot.health is not None:
            self.stdout.write(
                "Result backend: ok" if snapshot.health["ok"] else f"Result backend: {snapshot.health['problem']}"
            )
        if report is not None:
            self.stdout.write(
                f"Reconstructed {report.created} hourly snapshots from {report.start:%Y-%m-%d %H:%M} to "
                f"{report.end:%Y-%m-%d %H:%M} (estimates; {report.replaced} earlier reconstructions replaced, "
                f"{report.skipped} hours kept as measured)."
            )


def backfill_history(days: int, database: str | None) -> Any:
    try:
        return backfill(days, database)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
