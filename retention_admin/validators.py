"""Field validators shared by the models, the admin forms and the command."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import states
from django.core.exceptions import ValidationError

from .globs import GlobError, validate_glob

MIN_KEEP_FOR = timedelta(minutes=1)
# Longer is "forever" in all but name, and date arithmetic on it overflows.
MAX_KEEP_FOR = timedelta(days=36525)
KNOWN_STATES = sorted(states.ALL_STATES)


def validate_task_name_pattern(value: str) -> None:
    if not value:
        return
    try:
        validate_glob(value)
    except GlobError as exc:
        raise ValidationError(
            "%(pattern)r is not a supported task-name glob: %(reason)s.",
            code="invalid_glob",
            params={"pattern": value, "reason": str(exc)},
        ) from exc


def validate_statuses(value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValidationError("Statuses must be a list of Celery state names.", code="invalid")
    unknown = sorted(set(value) - set(KNOWN_STATES))
    if unknown:
        raise ValidationError(
            "Unknown Celery state(s): %(unknown)s. Known states are %(known)s.",
            code="unknown_state",
            params={"unknown": ", ".join(unknown), "known": ", ".join(KNOWN_STATES)},
        )


def validate_keep_for(value: timedelta | None) -> None:
    if value is not None and value < MIN_KEEP_FOR:
        raise ValidationError(
            "Keep results for at least one minute, or leave empty to keep them forever.",
            code="keep_for_too_short",
        )
    if value is not None and value > MAX_KEEP_FOR:
        raise ValidationError(
            "Keep results for at most 100 years (36525 days), or leave empty to keep them forever.",
            code="keep_for_too_long",
        )
