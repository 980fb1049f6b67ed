from __future__ import annotations

import json as jsonlib
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ... import validators
from ...transfer import BATCH_SIZE, SHOWN, Report, TransferError, migrate, resolve
from .cleanup_results import TqdmProgress

UNTOUCHED = (
    "The source is untouched: nothing there was changed or deleted. Once you have checked the "
    "destination, clear the source yourself: let the Redis keys' TTLs run out, delete the keys, or "
    "FLUSHDB a Redis database that holds nothing else (for a database source, delete its rows)."
)


class Command(BaseCommand):
    help = (
        "Copy every result (and group result) from one result backend to another, "
        "then read each back through the destination backend and compare. Policies "
        "are not applied; the source is never changed. Safe to rerun: a result "
        "already in the destination with the same or a newer date_done is kept. "
        "Exit status 1 when a result does not match or cannot be read."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--from", dest="source", required=True, metavar="SOURCE",
                            help="The backend to copy from, as CELERY_RESULT_BACKEND names it "
                            "(redis://..., retention_admin.backends.RetentionRedisBackend+redis://..., django-db).")
        parser.add_argument("--to", dest="destination", required=True, metavar="DESTINATION",
                            help="The backend to copy to: a database backend "
                            "(retention_admin.backends.RetentionDatabaseBackend, django-db).")
        parser.add_argument("--database", metavar="ALIAS",
                            help="The database side's alias (database -> database: the source's). Default: Django's router.")
        parser.add_argument("--to-database", metavar="ALIAS", help="Database -> database: the destination's alias.")
        parser.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                            help=f"Results per read, transaction and check ({validators.BATCH_SIZE.span}; default {BATCH_SIZE}).")
        parser.add_argument("--dry-run", action="store_true", help="Count what would be copied; write nothing.")
        parser.add_argument("--json", action="store_true", help="Print the report as one JSON object.")
        parser.add_argument("--no-progress", action="store_true", help="No progress bar on stderr.")

    def handle(self, *, source: str, destination: str, database: str | None, to_database: str | None,
               batch_size: int, dry_run: bool, json: bool, no_progress: bool, verbosity: int, **options: Any) -> None:
        problem = validators.BATCH_SIZE.option_problem("--batch-size", batch_size)
        if problem:
            raise CommandError(problem)
        try:
            from_side = resolve(source, role="--from", alias=database)
            to_side = resolve(destination, role="--to", alias=to_database if from_side.kind == "database" else database)
            if to_side.kind != "database":
                raise TransferError(f"--to {destination!r} is Redis; migrate_results moves Redis -> database "
                                    "and database -> database.")
            if from_side.kind == "redis" and to_database:
                raise TransferError("--to-database is for database -> database; from Redis, name the "
                                    "destination's alias with --database.")
            if from_side.kind == "database" and to_database is None:
                raise TransferError("Database -> database needs the destination's alias: --to-database ALIAS "
                                    "(--database names the source's).")
            show = not no_progress and not json and verbosity > 0 and self.stderr.isatty()
            report = migrate(from_side, to_side, dry_run=dry_run, batch_size=batch_size,
                             progress=TqdmProgress(self.stderr._out) if show else None)
        except TransferError as exc:
            raise CommandError(str(exc)) from exc
        if json:
            self.stdout.write(jsonlib.dumps(report.as_dict()))
        elif verbosity > 0:
            self.stdout.write(describe(report))
        if not report.ok:
            raise CommandError(failure(report))


def describe(report: Report) -> str:
    data = report.as_dict()
    verb = "Would copy" if report.dry_run else "Copied"
    lines = [
        f"{verb} results from {report.source} to {report.destination}:",
        (
            f"  results: scanned {data['scanned']}, {verb.lower()} {data['copied']} "
            f"({data['replaced']} replacing an older copy), already present {data['already_present']}, "
            f"newer in the destination (kept) {data['newer_in_destination']}, unreadable {data['unreadable']}"
        ),
    ]
    groups = data["groups"]
    lines.append(f"  groups: scanned {groups['scanned']}, {verb.lower()} {groups['copied']}, "
                 f"already present {groups['already_present']}")
    if report.dry_run:
        lines.append(f"  checksum of what would be checked: {data['checksum_source']}")
        lines.append("Dry run: nothing was written.")
    else:
        lines.append(f"  verified through the destination backend: {data['verified']} results, "
                     f"{groups['verified']} groups; mismatches: {data['mismatches']}")
        lines.append(f"  checksum source      {data['checksum_source']}")
        lines.append(f"  checksum destination {data['checksum_destination']}")
    rate = data["scanned"] / report.seconds if report.seconds else 0.0
    lines.append(f"  {report.seconds:.1f} s ({rate:,.0f} results/s)")
    lines.append(UNTOUCHED)
    return "\n".join(lines)


def failure(report: Report) -> str:
    parts = []
    if report.mismatches:
        shown = "; ".join(f"{m['id']} ({', '.join(m['fields'])})" for m in report.mismatched)
        more = f" (first {SHOWN})" if report.mismatches > SHOWN else ""
        parts.append(f"{report.mismatches} result(s) differ in the destination{more}: {shown}.")
    if report.unreadable:
        more = f" (first {SHOWN})" if report.unreadable > SHOWN else ""
        parts.append(f"{report.unreadable} source result(s) could not be read and were not copied{more}: "
                     f"{', '.join(report.unreadable_ids)}.")
    return " ".join(parts) + " Do not clear the source; the rest was copied, and rerunning is safe."
