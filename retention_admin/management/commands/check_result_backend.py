"""``manage.py check_result_backend``: a timed round trip through the Celery result backend."""

from __future__ import annotations

import json as jsonlib
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from ... import validators
from ...health import check_backend, remember


class Command(BaseCommand):
    help = (
        "Store, read back and forget a probe result through the configured Celery result "
        "backend (or --url), timing each step; exit status 1 with the likely cause when it fails."
    )
    # A health check must run even when the system checks would stop other commands.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--url", default=None,
            help="Check this result backend URL instead of CELERY_RESULT_BACKEND (e.g. before switching).",
        )
        parser.add_argument(
            "--timeout", type=validators.finite_float, default=5.0, metavar="SECONDS",
            help=f"Connection and socket timeout for network backends ({validators.BACKEND_TIMEOUT_SECONDS.span}; default 5).",
        )
        parser.add_argument("--json", action="store_true", help="Print one JSON object.")

    def handle(self, *, url: str | None, timeout: float, json: bool, **options: Any) -> None:
        problem = validators.BACKEND_TIMEOUT_SECONDS.option_problem("--timeout", timeout)
        if problem:
            raise CommandError(problem)
        health = check_backend(url, timeout=timeout)
        data = health.as_dict()
        if url is None:
            remember(data)  # the dashboard shows the configured backend's health
        if json:
            self.stdout.write(jsonlib.dumps(data))
        else:
            self.stdout.write(f"Result backend: {health.backend}")
            for step in health.steps:
                if "ms" in step:
                    self.stdout.write(f"  {step['step']:<17} ok   {step['ms']:8.2f} ms")
                else:
                    self.stdout.write(f"  {step['step']:<17} FAILED")
            if health.ok:
                self.stdout.write(f"Round trip ok in {health.total_ms:.2f} ms.")
        if not health.ok:
            raise CommandError(health.problem)
