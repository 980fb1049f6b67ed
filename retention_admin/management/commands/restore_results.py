from __future__ import annotations

import json as jsonlib
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ... import validators
from ...archive import ArchiveError
from ...restore import RestoreError, restore_batches


class Command(BaseCommand):
    help = (
        "Put archived results back into TaskResult. Every batch is verified first; a "
        "task id already present is skipped, never overwritten; each batch is restored "
        "all-or-nothing. Restored results are protected from cleanup for a grace period."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("batch_ids", nargs="+", type=int, metavar="BATCH_ID", help="Archive batch ids (see the admin).")
        parser.add_argument("--task-id", action="append", dest="task_ids", metavar="ID", help="Restore only this task id (repeatable).")
        parser.add_argument("--dry-run", action="store_true", help="Verify and report what would be restored; write nothing.")
        parser.add_argument(
            "--grace-days", type=validators.finite_float, metavar="DAYS",
            help=f"Protect restored results from cleanup this long ({validators.RESTORE_GRACE_DAYS.span}; "
            "default: RESTORE_GRACE_DAYS; 0 for none).",
        )
        parser.add_argument("--database", metavar="ALIAS", help="Database alias to restore into (default: Django's router).")
        parser.add_argument("--json", action="store_true", help="Print the report as one JSON object.")

    def handle(self, *, batch_ids: list[int], task_ids: list[str] | None, dry_run: bool, grace_days: float | None,
               database: str | None, json: bool, verbosity: int, **options: Any) -> None:
        from django.db import connections

        # Before any archive is read. call_command(grace_days=...) bypasses argparse,
        # so NaN (which compares False with every bound) is refused here too.
        problem = None if grace_days is None else validators.RESTORE_GRACE_DAYS.option_problem("--grace-days", grace_days)
        if problem:
            raise CommandError(problem)
        if task_ids is not None and not all(task_id.strip() for task_id in task_ids):
            # A blank id matches no record: the restore would quietly do nothing.
            raise CommandError("--task-id must not be blank.")
        if database is not None and database not in connections.settings:
            raise CommandError(f"Unknown database alias {database!r}; known aliases: {', '.join(sorted(connections.settings))}.")
        try:
            report = restore_batches(batch_ids, task_ids=task_ids, dry_run=dry_run, grace_days=grace_days, using=database)
        except (RestoreError, ArchiveError) as exc:
            raise CommandError(str(exc)) from exc
        data = report.as_dict()
        if json:
            self.stdout.write(jsonlib.dumps(data))
            return
        if verbosity == 0:
            return
        verb = "would restore" if dry_run else "restored"
        for batch in data["batches"]:
            line = f"batch {batch['batch']}: {batch['records']} records, {verb} {batch['restored']}"
            if batch["already_present"]:
                line += f", skipped {batch['already_present']} already present"
            if batch["duplicates"]:
                line += f", {batch['duplicates']} archived twice"
            if batch["not_in_batch"]:
                line += f"; not in this batch: {', '.join(batch['not_in_batch'])}"
            if batch["unchanged"]:
                line += "; nothing to restore, so the batch and its grace period are unchanged"
            self.stdout.write(line)
        if not dry_run and data["grace_until"] and any(b["restored"] for b in data["batches"]):
            self.stdout.write(f"Restored results are protected from cleanup until {data['grace_until']}.")
