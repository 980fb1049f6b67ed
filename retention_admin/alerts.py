"""Thresholds: which of ``RETENTION_ADMIN``'s alert limits a snapshot is over.

``evaluate`` lists the thresholds a snapshot is over (stored on the snapshot, so
the banner never recomputes anything); ``announce`` logs a WARNING and sends
``signals.threshold_crossed`` for those the previous snapshot was not over, so a
store that stays too big warns once, not every hour.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from . import conf
from .models import StorageSnapshot
from .report import human_bytes
from .signals import threshold_crossed

logger = logging.getLogger(__name__)

# Growth per day compares with the snapshot about a day older, or, in the first
# day, with the oldest one at least this old.
GROWTH_BASE = timedelta(hours=20)
GROWTH_MIN_SPAN = timedelta(hours=6)


def growth_per_day(snapshot: StorageSnapshot) -> tuple[float, bool] | None:
    """Bytes per day the table grew, against a measured snapshot about a day older."""
    if snapshot.table_bytes is None:
        return None
    earlier = StorageSnapshot.objects.filter(
        kind=StorageSnapshot.Kind.MEASURED, database=snapshot.database, table_bytes__isnull=False
    ).exclude(pk=snapshot.pk)
    base = earlier.filter(taken_at__lte=snapshot.taken_at - GROWTH_BASE).order_by("-taken_at").first()
    if base is None:
        base = (
            earlier.filter(taken_at__lte=snapshot.taken_at - GROWTH_MIN_SPAN).order_by("taken_at").first()
        )
    if base is None or base.table_bytes is None:
        return None
    days = (snapshot.taken_at - base.taken_at).total_seconds() / 86400
    estimated = snapshot.bytes_estimated or base.bytes_estimated
    return (snapshot.table_bytes - base.table_bytes) / days, estimated


def _alert(key: str, value: float, threshold: int, estimated: bool, what: str) -> dict[str, Any]:
    approx = "about " if estimated else ""
    return {
        "key": key,
        "value": int(value),
        "threshold": threshold,
        "estimated": estimated,
        "message": f"{what} is {approx}{_fmt(key, value)}, over the threshold of {_fmt(key, threshold)}.",
    }


def _fmt(key: str, value: float) -> str:
    if key == "rows":
        return f"{int(value):,} rows"
    if key == "growth_per_day":
        return f"{human_bytes(int(value))} a day"
    return human_bytes(int(value))


def evaluate(snapshot: StorageSnapshot) -> list[dict[str, Any]]:
    """The thresholds this (measured) snapshot is over."""
    if snapshot.kind != StorageSnapshot.Kind.MEASURED:
        return []
    config = conf.get_config()
    alerts = []
    if config.alert_rows is not None and snapshot.task_rows > config.alert_rows:
        alerts.append(
            _alert("rows", snapshot.task_rows, config.alert_rows, snapshot.rows_estimated, "The task result table")
        )
    size = snapshot.table_bytes
    if config.alert_bytes is not None and size is not None and size > config.alert_bytes:
        alerts.append(
            _alert("bytes", size, config.alert_bytes, snapshot.bytes_estimated, "The task result table (with indexes)")
        )
    if config.alert_growth_per_day is not None:
        growth = growth_per_day(snapshot)
        if growth is not None and growth[0] > config.alert_growth_per_day:
            alerts.append(
                _alert("growth_per_day", growth[0], config.alert_growth_per_day, growth[1], "The table's growth")
            )
    memory = (snapshot.redis or {}).get("used_memory")
    if config.alert_redis_memory is not None and isinstance(memory, int) and memory > config.alert_redis_memory:
        alerts.append(
            _alert("redis_memory", memory, config.alert_redis_memory, False, "Redis memory")
        )
    return alerts


def announce(snapshot: StorageSnapshot) -> list[dict[str, Any]]:
    """Log and signal the thresholds this snapshot newly crossed; returns them."""
    if not snapshot.alerts:
        return []
    previous = (
        StorageSnapshot.objects.filter(
            kind=StorageSnapshot.Kind.MEASURED, database=snapshot.database, taken_at__lte=snapshot.taken_at
        )
        .exclude(pk=snapshot.pk)
        .order_by("-taken_at", "-pk")
        .values_list("alerts", flat=True)
        .first()
    )
    was_over = {alert.get("key") for alert in previous or []}
    crossed = [alert for alert in snapshot.alerts if alert["key"] not in was_over]
    if not crossed:
        return []
    for alert in crossed:
        logger.warning("retention_admin threshold crossed: %s", alert["message"])
    for receiver, response in threshold_crossed.send_robust(
        sender=StorageSnapshot, snapshot=snapshot, alerts=crossed
    ):
        if isinstance(response, Exception):
            logger.error(
                "threshold_crossed receiver %r failed: %s", receiver, response, exc_info=response
            )
    return crossed


def current_alerts() -> tuple[StorageSnapshot | None, list[dict[str, Any]]]:
    """The latest measured snapshot (id, time, alerts only) and the thresholds it is over."""
    latest = (
        StorageSnapshot.objects.filter(kind=StorageSnapshot.Kind.MEASURED)
        .only("id", "taken_at", "alerts")
        .order_by("-taken_at", "-pk")
        .first()
    )
    return latest, list(latest.alerts) if latest else []
