from __future__ import annotations

import json as jsonlib
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ...explain import as_dict, explain


class Command(BaseCommand):
    help = (
        "Say which retention policy governs a result and why, when it becomes due, what "
        "protects it, and — once deleted — which archive batch holds it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("task_id", metavar="TASK_ID")
        parser.add_argument("--json", action="store_true", help="Print the explanation as one JSON object.")

    def handle(self, *, task_id: str, json: bool, **options: Any) -> None:
        if not task_id.strip():
            # It names no result; explaining it would report "not found" and exit 0.
            raise CommandError("TASK_ID must not be blank.")
        explanation = explain(task_id)
        data = as_dict(explanation)
        if json:
            self.stdout.write(jsonlib.dumps(data))
            return
        self.stdout.write(data["summary"])
        if explanation.present:
            self.stdout.write(
                f"  task {data['task_name']} · status {data['status']} · done {data['date_done']} · ~{data['bytes']} bytes"
            )
            for policy in data["policies"]:
                mark = "governs" if policy["name"] == data["governing_policy"] else ("matches (shadowed)" if policy["matches"] else "no match")
                self.stdout.write(f"  {policy['priority']:>5} {policy['name']}: {mark} — {'; '.join(policy['reasons'])}")
            for hold in data["holds"]:
                self.stdout.write(f"  hold: {hold['reason'] or 'no reason given'} (until {hold['until'] or 'lifted'})")
            if data["restore_grace_until"]:
                self.stdout.write(f"  restored from an archive; protected until {data['restore_grace_until']}")
        for ref in data["archives"]:
            self.stdout.write(
                f"  archive batch {ref['batch']} ({ref['status']}, policy {ref['policy']}, run {ref['run']}) "
                f"holds the copy done at {ref['date_done']}"
            )
