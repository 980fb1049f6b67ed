"""What this app reads from the Celery app's configuration."""

from __future__ import annotations

from datetime import timedelta

from celery import Celery, current_app
from celery.utils.time import maybe_timedelta


def get_app() -> Celery:
    # The project's app becomes current when its package imports it, as Celery's
    # Django guide sets up; tasks and backends pass their own app instead.
    return current_app._get_current_object()  # type: ignore[no-any-return]


def result_expires(app: Celery | None = None) -> timedelta | None:
    """Celery's ``result_expires`` as a timedelta; None (or 0) keeps results forever."""
    value = (app or get_app()).conf.result_expires
    if not value:
        return None
    return maybe_timedelta(value)  # type: ignore[no-any-return]
