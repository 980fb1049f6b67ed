"""The ``RETENTION_ADMIN`` setting: defaults, validation and a cached reader.

Every default lives here and nowhere else. ``conf`` re-reads the setting when a
test changes it with ``override_settings`` (``setting_changed`` clears the cache).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import PurePath
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

SETTING_NAME = "RETENTION_ADMIN"


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _non_negative_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def _optional_positive_number(value: Any) -> bool:
    return value is None or (_non_negative_number(value) and value > 0)


def _boolean(value: Any) -> bool:
    return isinstance(value, bool)


# name -> (default, validator, what a valid value is, for the error message)
SCHEMA: dict[str, tuple[Any, Any, str]] = {
    # None: chosen per database (DATABASE_DEFAULTS), from the benchmark's measurements.
    "BATCH_SIZE": (None, lambda v: v is None or _positive_int(v), "None or a whole number of at least 1"),
    "SLEEP_SECONDS": (None, lambda v: v is None or _non_negative_number(v), "None or a number of seconds, 0 or more"),
    "MAX_RUNTIME_SECONDS": (None, _optional_positive_number, "None or a number of seconds above 0"),
    "LEASE_SECONDS": (300, _positive_int, "a whole number of seconds, at least 1"),
    "FAN_OUT": (True, _boolean, "True or False"),
    "SNAPSHOT_TOP_TASKS": (20, _positive_int, "a whole number of at least 1"),
    # Where archives go when STORAGES has no "retention_archive" storage.
    "ARCHIVE_DIR": (None, lambda v: v is None or (isinstance(v, (str, PurePath)) and str(v) != ""), "None or a directory path"),
    "ARCHIVE_BATCH_RECORDS": (10000, _positive_int, "a whole number of at least 1"),
    "RESTORE_GRACE_DAYS": (7, lambda v: _non_negative_number(v), "a number of days, 0 or more"),
    # Storage snapshots: above this many rows (by the database's statistics) a
    # snapshot samples instead of reading every row (see snapshots.py).
    "SNAPSHOT_EXACT_ROWS": (200_000, _positive_int, "a whole number of at least 1"),
    "SNAPSHOT_SAMPLE_ROWS": (20_000, _positive_int, "a whole number of at least 1"),
    # Thresholds (None: no alert): a snapshot over one warns (banner, log, signal).
    "ALERT_ROWS": (None, lambda v: v is None or _positive_int(v), "None or a whole number of at least 1"),
    "ALERT_BYTES": (None, lambda v: v is None or _positive_int(v), "None or a whole number of bytes, at least 1"),
    "ALERT_GROWTH_PER_DAY": (None, lambda v: v is None or _positive_int(v), "None or a whole number of bytes per day, at least 1"),
    "ALERT_REDIS_MEMORY": (None, lambda v: v is None or _positive_int(v), "None or a whole number of bytes, at least 1"),
    # PENDING/STARTED results older than this are reported as stuck.
    "STUCK_AFTER_SECONDS": (86_400, _positive_int, "a whole number of seconds, at least 1"),
    # Saving a policy in the admin that makes more results due at once asks first; None never asks.
    "CONFIRM_DUE_OVER": (10000, lambda v: v is None or (_non_negative_number(v) and isinstance(v, int)), "None or a whole number, 0 or more"),
    # Redis: how often a worker re-reads the policies it gives results their TTL by,
    # and the COUNT hint of each SCAN the enforcer sends (keys per round trip, roughly).
    "REDIS_POLICY_REFRESH_SECONDS": (30, _non_negative_number, "a number of seconds, 0 or more"),
    "REDIS_SCAN_COUNT": (1000, _positive_int, "a whole number of at least 1"),
}


# Batch size and pause when the setting leaves them to the database (see the
# benchmark). PostgreSQL and MariaDB: 5000-row batches were ~20% faster than 2000
# but doubled a concurrent writer's p99, so 2000. SQLite: one writer at a time,
# so smaller batches and a pause that lets the application's writes in. At 1M due
# rows with a writer storing 50 results a second: no pause 34 s but one write
# waited 20 s; 0.01 s 44 s, writer p99 235 ms; 0.02 s 54 s, 41 ms; 0.05 s 85 s,
# 39 ms.
DATABASE_DEFAULTS: dict[str, tuple[int, float]] = {
    "postgresql": (2000, 0.0),
    "mysql": (2000, 0.0),
    "sqlite": (1000, 0.02),
}
OTHER_DATABASE_DEFAULTS = (2000, 0.0)


@dataclass(frozen=True)
class Config:
    batch_size: int | None
    sleep_seconds: float | None
    max_runtime_seconds: float | None
    lease_seconds: int
    fan_out: bool
    snapshot_top_tasks: int
    archive_dir: str | PurePath | None
    archive_batch_records: int
    restore_grace_days: float
    snapshot_exact_rows: int
    snapshot_sample_rows: int
    alert_rows: int | None
    alert_bytes: int | None
    alert_growth_per_day: int | None
    alert_redis_memory: int | None
    stuck_after_seconds: int
    confirm_due_over: int | None
    redis_policy_refresh_seconds: float
    redis_scan_count: int


def setting_errors(value: Any) -> list[str]:
    """Describe everything wrong with a ``RETENTION_ADMIN`` value (empty when valid)."""
    if not isinstance(value, dict):
        return [f"{SETTING_NAME} must be a dict, not {type(value).__name__}."]
    errors = []
    for key in sorted(set(value) - set(SCHEMA), key=str):
        errors.append(
            f"{SETTING_NAME} has an unknown key {key!r}; known keys are "
            f"{', '.join(sorted(SCHEMA))}."
        )
    for key, (_default, valid, expected) in SCHEMA.items():
        if key in value and not valid(value[key]):
            errors.append(f"{SETTING_NAME}[{key!r}] must be {expected}, not {value[key]!r}.")
    return errors


@lru_cache(maxsize=1)
def get_config() -> Config:
    value = getattr(settings, SETTING_NAME, {})
    errors = setting_errors(value)
    if errors:
        raise ImproperlyConfigured(" ".join(errors))
    merged = {key: value.get(key, default) for key, (default, _v, _e) in SCHEMA.items()}
    return Config(**{key.lower(): val for key, val in merged.items()})


@receiver(setting_changed)
def _clear_cache(*, setting: str, **kwargs: Any) -> None:
    if setting == SETTING_NAME:
        get_config.cache_clear()
