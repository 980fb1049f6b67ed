"""``manage.py load_demo_history``: fill the result store with a realistic history (demo only)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import router
from django_celery_results.models import ChordCounter, GroupResult, TaskResult

from retention_admin.backfill import MAX_DAYS, backfill
from retention_admin.celery_config import result_expires
from retention_admin.models import ChordCounterSighting
from retention_admin.report import human_bytes
from retention_admin.snapshots import take_snapshot
from testproject.demo.history import (
    DEFAULT_DAYS,
    DEFAULT_RESULTS,
    DEFAULT_SEED,
    LARGE_RESULT_BYTES,
    HistorySummary,
    enable_demo_policies,
    generate_history,
)


def duration(value: timedelta | None) -> str:
    """90 days, 6 hours, 30 minutes; "forever" for None."""
    if value is None:
        return "forever"
    seconds = int(value.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return str(value)


class Command(BaseCommand):
    help = (
        "Generate a realistic history of Celery results (django-celery-results rows) for the "
        "demo, then point the seeded example retention policies at the demo task names and "
        "enable them. Meant for the throwaway demo database only."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--results",
            type=int,
            default=DEFAULT_RESULTS,
            metavar="N",
            help=f"Task results to generate (default {DEFAULT_RESULTS}).",
        )
        parser.add_argument(
            "--days",
            type=int,
            default=DEFAULT_DAYS,
            metavar="N",
            help=f"Days of history, ending now (default {DEFAULT_DAYS}).",
        )
        parser.add_argument(
            "--seed",
            type=int,
            default=DEFAULT_SEED,
            metavar="N",
            help=f"Random seed, for a reproducible history (default {DEFAULT_SEED}).",
        )
        parser.add_argument(
            "--no-policies", action="store_true", help="Leave the retention policies as they are."
        )
        parser.add_argument(
            "--replace",
            action="store_true",
            help="First delete the task results, group results, chord counters and "
            "their sightings already stored (otherwise the command refuses to "
            "add to them).",
        )

    def handle(
        self,
        *,
        results: int,
        days: int,
        seed: int,
        no_policies: bool,
        replace: bool,
        **options: Any,
    ) -> None:
        if results < 1:
            raise CommandError(f"--results must be 1 or more, not {results}.")
        if days < 1:
            raise CommandError(f"--days must be 1 or more, not {days}.")
        using = router.db_for_write(TaskResult)
        existing = TaskResult.objects.using(using).count()
        if existing and not replace:
            raise CommandError(
                f"The result store already holds {existing} task results; run with --replace to "
                "delete them (and all group results, chord counters and their sightings) first."
            )
        if replace:
            # Sightings of the chord counters deleted here would only be forgotten later.
            for model in (TaskResult, GroupResult, ChordCounter, ChordCounterSighting):
                model.objects.using(using).all().delete()
        summary = generate_history(results=results, days=days, seed=seed, using=using)
        self.stdout.write(self.describe(summary, days, seed))
        if not no_policies:
            self.stdout.write(self.enable_policies())
        self.stdout.write(self.reconstruct_growth(days, using))

    def reconstruct_growth(self, days: int, using: str) -> str:
        """Fill the storage dashboard: a snapshot now, and the generated past as estimates."""
        snapshot = take_snapshot(using, health=True)
        report = backfill(min(days, MAX_DAYS), using)
        return (
            f"\nStorage snapshot {snapshot.pk}: {snapshot.task_rows:,} task results; "
            f"{report.created} hourly snapshots of the last {min(days, MAX_DAYS)} days reconstructed "
            "from the history (shown as estimates on the storage dashboard)."
        )

    def describe(self, s: HistorySummary, days: int, seed: int) -> str:
        assert s.oldest and s.newest and s.window_start
        fmt = "%Y-%m-%d %H:%M"
        statuses = "  ".join(
            f"{status} {count:,} ({100 * count / s.results:.1f}%)"
            for status, count in s.statuses.most_common()
        )
        lines = [
            self.style.SUCCESS(
                f"Generated {s.results:,} task results in {s.seconds:.1f} s (seed {seed})."
            ),
            f"  date_done     {s.window_start:{fmt}} to {s.newest:{fmt}} UTC ({days} days); "
            f"compliance.* back to {s.oldest:{fmt}}",
            f"  task names    {s.task_names}, plus {s.legacy_rows:,} legacy rows without a name "
            "(stored before result_extended was on)",
            f"  statuses      {statuses}",
            f"  size          {human_bytes(s.bytes)} of results, tracebacks, meta and arguments; "
            f"{s.large_results:,} results of {LARGE_RESULT_BYTES // 1024} KB or more "
            f"(largest {human_bytes(s.largest_result)})",
            f"  groups        {s.groups:,} group results "
            f"({s.orphaned_groups} whose members are gone)",
            f"  chords        {s.chord_counters} chord counters: {s.stuck_chords} orphaned "
            f"after their header finished, {s.headless_chords} orphaned with no header results "
            f"left ({s.sighted_chords} seen by an earlier cleanup run), "
            f"{s.running_chords} in progress",
        ]
        return "\n".join(lines)

    def enable_policies(self) -> str:
        policies, missing = enable_demo_policies()
        rows = [
            ("Policy", "Enabled", "Priority", "Tier", "Pattern", "Statuses", "Keeps", "Archive")
        ]
        for p in policies:
            rows.append(
                (
                    p.name,
                    "yes" if p.enabled else "no",
                    str(p.priority),
                    p.tier.slug,
                    p.task_name_pattern or "(any)",
                    ", ".join(p.statuses) or "(any)",
                    duration(p.keep_for),
                    "yes" if p.archive else "no",
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        out = ["", self.style.SUCCESS("Retention policies (demo patterns enabled):")]
        out += [
            "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in rows
        ]
        expires = result_expires()
        out.append(
            "  Results no enabled policy governs follow Celery's result_expires: "
            + (f"kept {duration(expires)}." if expires else "kept (result_expires is None).")
        )
        for name in missing:
            out.append(
                self.style.WARNING(f"  Policy {name!r} does not exist, so it was not enabled.")
            )
        return "\n".join(out)
