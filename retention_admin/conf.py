"""The ``RETENTION_ADMIN`` setting: defaults, validation and a cached reader.

Every default lives here and nowhere else. ``conf`` re-reads the setting when a
test changes it with ``override_settings`` (``setting_changed`` clears the cache).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import PurePath
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

from . import validators
from .validators import DAY_SECONDS, MAX_KEEP_FOR, Fault, NumberRange

SETTING_NAME = "RETENTION_ADMIN"


@dataclass(frozen=True)
class Number:
    """A numeric setting: its range, and whether None is accepted (what None means is said where it is read)."""

    accepted: NumberRange
    optional: bool = False


@dataclass(frozen=True)
class Other:
    """A setting that is not a number."""

    valid: Callable[[Any], bool]
    expected: str  # what a valid value is, for the error message


def _archive_dir(value: Any) -> bool:
    return value is None or (isinstance(value, (str, PurePath)) and str(value) != "")


# Settings that mirror a command option share its range (validators.py); the
# rest are bounded here. No maximum where a larger value is only compared in
# Python and cannot break anything (thresholds); a maximum where it reaches SQL,
# Redis or date arithmetic, or would hold a lock or memory for too long.
SCHEMA: dict[str, tuple[Any, Number | Other]] = {
    # None: chosen per database (DATABASE_DEFAULTS), from the benchmark's measurements.
    "BATCH_SIZE": (None, Number(validators.BATCH_SIZE, optional=True)),
    "SLEEP_SECONDS": (None, Number(validators.SLEEP_SECONDS, optional=True)),
    "MAX_RUNTIME_SECONDS": (None, Number(validators.MAX_RUNTIME_SECONDS, optional=True)),
    # A crashed run's scopes stay locked this long: more than a day stops cleanup
    # for that long after every crash.
    "LEASE_SECONDS": (300, Number(NumberRange(1, DAY_SECONDS, whole=True, unit="seconds", gloss="1 day"))),
    "FAN_OUT": (True, Other(lambda v: isinstance(v, bool), "True or False")),
    "SNAPSHOT_TOP_TASKS": (20, Number(NumberRange(1, None, whole=True))),
    # Where archives go when STORAGES has no "retention_archive" storage.
    "ARCHIVE_DIR": (None, Other(_archive_dir, "None or a directory path")),
    # One archive object is restored in one transaction, and the Redis enforcer
    # holds a batch's records in memory until it is written.
    "ARCHIVE_BATCH_RECORDS": (10000, Number(NumberRange(1, 1_000_000, whole=True))),
    "RESTORE_GRACE_DAYS": (7, Number(validators.RESTORE_GRACE_DAYS)),
    # Storage snapshots: above this many rows (by the database's statistics) a
    # snapshot samples instead of reading every row (see snapshots.py).
    "SNAPSHOT_EXACT_ROWS": (200_000, Number(NumberRange(1, None, whole=True))),
    # Sent to the database as a LIMIT; a sample of more than a million rows is
    # no longer cheaper than reading the table.
    "SNAPSHOT_SAMPLE_ROWS": (20_000, Number(NumberRange(1, 1_000_000, whole=True))),
    # Thresholds (None: no alert): a snapshot over one warns (banner, log, signal).
    "ALERT_ROWS": (None, Number(NumberRange(1, None, whole=True), optional=True)),
    "ALERT_BYTES": (None, Number(NumberRange(1, None, whole=True, unit="bytes"), optional=True)),
    "ALERT_GROWTH_PER_DAY": (None, Number(NumberRange(1, None, whole=True, unit="bytes per day"), optional=True)),
    "ALERT_REDIS_MEMORY": (None, Number(NumberRange(1, None, whole=True, unit="bytes"), optional=True)),
    # PENDING/STARTED results older than this are reported as stuck. Subtracted
    # from now: beyond 100 years (as long as a policy keeps) date arithmetic overflows.
    "STUCK_AFTER_SECONDS": (
        86_400,
        Number(NumberRange(1, MAX_KEEP_FOR.days * DAY_SECONDS, whole=True, unit="seconds", gloss="100 years")),
    ),
    # Saving a policy in the admin that makes more results due at once asks first; None never asks.
    "CONFIRM_DUE_OVER": (10000, Number(NumberRange(0, None, whole=True), optional=True)),
    # Redis: how often a worker re-reads the policies it gives results their TTL
    # by (after a day an edit in the admin would look ignored), and the COUNT hint
    # of each SCAN the enforcer sends (Redis is single-threaded: one SCAN of
    # 100,000 keys already blocks it for tens of milliseconds).
    "REDIS_POLICY_REFRESH_SECONDS": (30, Number(NumberRange(0, DAY_SECONDS, unit="seconds", gloss="1 day"))),
    "REDIS_SCAN_COUNT": (1000, Number(NumberRange(1, 100_000, whole=True))),
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


def setting_problems(value: Any) -> list[tuple[Fault, str]]:
    """Everything wrong with a ``RETENTION_ADMIN`` value, each with its kind (checks.py gives each kind its id)."""
    if not isinstance(value, dict):
        return [("invalid", f"{SETTING_NAME} must be a dict, not {type(value).__name__}.")]
    problems: list[tuple[Fault, str]] = []
    for key in sorted(set(value) - set(SCHEMA), key=str):
        problems.append((
            "invalid",
            f"{SETTING_NAME} has an unknown key {key!r}; known keys are {', '.join(sorted(SCHEMA))}.",
        ))
    for key, (_default, rule) in SCHEMA.items():
        if key not in value:
            continue
        name = f"{SETTING_NAME}[{key!r}]"
        if isinstance(rule, Number):
            problem = rule.accepted.setting_problem(name, value[key], optional=rule.optional)
            if problem is not None:
                problems.append(problem)
        elif not rule.valid(value[key]):
            problems.append(("invalid", f"{name} must be {rule.expected}, not {value[key]!r}."))
    return problems


def setting_errors(value: Any) -> list[str]:
    """Describe everything wrong with a ``RETENTION_ADMIN`` value (empty when valid)."""
    return [message for _fault, message in setting_problems(value)]


@lru_cache(maxsize=1)
def get_config() -> Config:
    value = getattr(settings, SETTING_NAME, {})
    errors = setting_errors(value)
    if errors:
        raise ImproperlyConfigured(" ".join(errors))
    merged = {key: value.get(key, default) for key, (default, _rule) in SCHEMA.items()}
    return Config(**{key.lower(): val for key, val in merged.items()})


@receiver(setting_changed)
def _clear_cache(*, setting: str, **kwargs: Any) -> None:
    if setting == SETTING_NAME:
        get_config.cache_clear()
