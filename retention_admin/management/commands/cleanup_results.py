from __future__ import annotations

import json as jsonlib
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from ... import validators
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
        parser.add_argument("--days", type=int, help=f"Keep N days ({validators.KEEP_DAYS.span}) for every selected policy and the remainder, this run only.")
        parser.add_argument("--tier", action="append", default=[], metavar="SLUG", help="Run this tier's policies (repeatable).")
        parser.add_argument("--policy", action="append", default=[], metavar="NAME", help="Run this policy (repeatable).")
        parser.add_argument("--batch-size", type=int, help=f"Rows per delete transaction ({validators.BATCH_SIZE.span}).")
        parser.add_argument("--max-runtime", type=validators.finite_float, metavar="SECONDS", help=f"Stop cleanly after this long ({validators.MAX_RUNTIME_SECONDS.span}); the next run continues.")
        parser.add_argument("--sleep", type=validators.finite_float, metavar="SECONDS", help=f"Pause between batches ({validators.SLEEP_SECONDS.span}).")
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
        # Before anything is recorded or deleted. argparse has refused what is not a
        # finite number; call_command(sleep=...) bypasses it, so types are checked again.
        for option, value, accepted in (
            ("--days", days, validators.KEEP_DAYS),
            ("--batch-size", batch_size, validators.BATCH_SIZE),
            ("--sleep", sleep, validators.SLEEP_SECONDS),
            ("--max-runtime", max_runtime, validators.MAX_RUNTIME_SECONDS),
        ):
            problem = None if value is None else accepted.option_problem(option, value)
            if problem:
                raise CommandError(problem)
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
            if json and exc.run.report:
                # A failed run still reports what it did; scripts read it from stdout.
                self.stdout.write(jsonlib.dumps(exc.run.report))
            raise CommandError(failure_message(exc.run, str(exc))) from exc
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


def _sentence(text: str) -> str:
    # Errors arrive with or without their full stop; a message must not end in "..".
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else f"{text}."


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def failure_message(run: CleanupRun, error: str) -> str:
    """What failed and, truthfully, what was done before or besides it.

    A run fails in one of two ways. An exception stops it where it happened (its
    traceback is in ``run.error``): what was deleted before stays deleted, nothing
    after ran. A scope that fails on its own (an archive location, Redis) is
    recorded and the run goes on with the others.
    """
    report = run.report or {}
    scopes = [*report.get("policies", []), report.get("unmatched") or {}]
    deleted = sum(scope.get("deleted", 0) for scope in scopes)
    archived = sum(scope.get("archived", 0) for scope in scopes)
    done = _count(deleted, "database result") + " deleted" + (f" ({archived} archived first)" if archived else "")
    redis = report.get("redis")
    if redis:
        done += f", {_count(redis['totals']['deleted'], 'Redis result')} deleted"
    recorded = run.error or ""
    if "Traceback (most recent call last)" not in recorded:
        what = f"The rest of the run went ahead: {done}."
    elif " in _clean_redis\n" in recorded:
        # The Redis part runs after the database part is over.
        what = f"The database part had completed ({done}); the Redis part stopped at the error."
    else:
        what = f"Nothing after the failing batch was deleted; before it, {done}."
    return f"Cleanup run #{run.pk} failed: {_sentence(error)} {what} See the run in the admin for the full error."
