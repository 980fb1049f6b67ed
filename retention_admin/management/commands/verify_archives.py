from __future__ import annotations

import json as jsonlib
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...archive import verify_batch
from ...models import ArchiveBatch


class Command(BaseCommand):
    help = (
        "Re-read archive objects and check their SHA-256, size and record count; a batch "
        "that fails is marked corrupt with the reason. Exit status 1 when any fails."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("batch_ids", nargs="*", type=int, metavar="BATCH_ID",
                            help="Batches to verify (default: every written, complete or restored batch).")
        parser.add_argument("--json", action="store_true", help="Print the outcome as one JSON object.")

    def handle(self, *, batch_ids: list[int], json: bool, verbosity: int, **options: Any) -> None:
        batches = ArchiveBatch.objects.order_by("id")
        if batch_ids:
            found = {b.pk: b for b in batches.filter(pk__in=batch_ids)}
            missing = [str(i) for i in batch_ids if i not in found]
            if missing:
                raise CommandError(f"No archive batch with id {', '.join(missing)}.")
            selected = [found[i] for i in dict.fromkeys(batch_ids)]
        else:
            selected = list(batches.filter(status__in=[
                ArchiveBatch.Status.WRITTEN, ArchiveBatch.Status.COMPLETE, ArchiveBatch.Status.RESTORED,
            ]))
        outcome = []
        for batch in selected:
            check = verify_batch(batch)
            outcome.append({"batch": batch.pk, "ok": check.ok, "records": check.records, "problem": check.problem})
            if not json and verbosity > 0:
                verdict = "ok" if check.ok else f"FAILED: {check.problem}"
                self.stdout.write(f"batch {batch.pk} ({batch.policy_name}, {batch.name}): {verdict}")
        failed = [o["batch"] for o in outcome if not o["ok"]]
        if json:
            self.stdout.write(jsonlib.dumps({"verified": len(outcome), "failed": failed, "batches": outcome}))
        if failed:
            raise CommandError(f"{len(failed)} of {len(outcome)} archive batches failed verification: {', '.join(map(str, failed))}.")
        if not json and verbosity > 0:
            self.stdout.write(f"{len(outcome)} archive batches verified.")
