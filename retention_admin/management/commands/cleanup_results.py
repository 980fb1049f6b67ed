from __future__ import annotations

import json as jsonlib
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from ...executor import CleanupError, CleanupFailed, Options, Selection, run_cleanup
from ...models import CleanupRun
from ...report import format_report

EXIT_LEASE_BUSY = 3


class TqdmProgress:
    wants_totals = True

    def __init__(self, stream: Any):
        self.stream = stream
        self.bar: tqdm[Any] | None = None

    def start(self, label: str, total: int | None) -> None:
        if total == 0:
            return  # nothing due in this scope: no bar to clutter the terminal
        self.bar = tqdm(total=total, desc=label, unit="rows", file=self.stream, leave=True)

    def advance(self, count: int) -> None:
        if self.bar is not None:
            self.bar.update(count)

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Command(BaseCommand):
    help = (
        "Delete the Celery results that retention policies (and, for the rest, "
        "result_expires) say are due. Exit status: 0 done, 1 error, "
        f"{EXIT_LEASE_BUSY} a policy was skipped because another run holds its lease."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="Report what would go; change nothing.")
        parser.add_argument("--days", type=int, help="Keep N days for every selected policy and the remainder, this run only.")
        parser.add_argument("--tier", action="append", default=[], metavar="SLUG", help="Run this tier's policies (repeatable).")
        parser.add_argument("--policy", action="append", default=[], metavar="NAME", help="Run this policy (repeatable).")
        parser.add_argument("--batch-size", type=int, help="Rows per delete transaction.")
        parser.add_argument("--max-runtime", type=float, metavar="SECONDS", help="Stop cleanly after this long; the next run continues.")
        parser.add_argument("--sleep", type=float, metavar="SECONDS", help="Pause between batches.")
        parser.add_argument("--backend", choices=["database", "redis", "all"], default="all", help="Which result store to clean (default: all configured).")
        parser.add_argument("--database", metavar="ALIAS", help="Database alias holding the results (default: Django's router).")
        parser.add_argument("--json", action="store_true", help="Print the run report as one JSON object.")
        parser.add_argument("--no-progress", action="store_true", help="No progress bar on stderr.")

    def handle(
        self,
        *,
        dry_run: bool,
        days: int | None,
        tier: list[str],
        policy: list[str],
        batch_size: int | None,
        max_runtime: float | None,
        sleep: float | None,
        backend: str,
        database: str | None,
        json: bool,
        no_progress: bool,
        verbosity: int,
        **options: Any,
    ) -> None:
        notes: list[str] = []
        show_progress = not no_progress and not json and verbosity > 0 and self.stderr.isatty()
        selection = Selection(policies=policy, tiers=tier)
        run_options = Options(
            dry_run=dry_run,
            days=days,
            batch_size=batch_size,
            sleep_seconds=sleep,
            max_runtime_seconds=max_runtime,
            database=database,
            trigger=CleanupRun.Trigger.COMMAND,
            backend=backend,
            progress=TqdmProgress(self.stderr._out) if show_progress else None,
        )
        try:
            run = run_cleanup(selection, run_options)
        except CleanupError as exc:
            raise CommandError(str(exc)) from exc
        except CleanupFailed as exc:
            raise CommandError(
                f"Cleanup run #{exc.run.pk} failed: {exc}. Nothing after the failing batch "
                "was deleted; see the run in the admin for the full error."
            ) from exc
        if json:
            self.stdout.write(jsonlib.dumps(run.report))
        elif verbosity > 0:
            self.stdout.write(format_report(run.report, [*run.notes, *notes]))
        busy = run.options.get("busy", [])
        if busy:
            raise CommandError(
                f"Skipped {', '.join(busy)}: another run holds the lease.",
                returncode=EXIT_LEASE_BUSY,
            )
