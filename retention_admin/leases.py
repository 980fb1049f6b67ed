"""One run at a time per scope, across processes and hosts.

A lease is a row per scope. It is taken by a conditional UPDATE (free, or expired),
renewed while the run works, and released at the end; a holder that died leaves an
expired lease that the next run takes over. No row lock is held between statements,
so the lease table never blocks a writer.

Every expiry is written and compared by the database's clock, inside the UPDATE
itself (``database_now``): an expiry one host wrote is never judged by another
host's clock, so clock skew between hosts, however large, cannot hand a live lease
to a second run.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connections, router, transaction
from django.db.models import DateTimeField, Expression, ExpressionWrapper, Q
from django.db.models.expressions import RawSQL
from django.db.models.functions import Now
from django.utils import timezone

from .models import CleanupLease


def make_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _offset_seconds(connection: Any) -> float:
    """The UTC offset of the zone Django stores naive datetimes in on ``connection``, now.

    Only the offset comes from this host's clock (via the zone's rules), never the
    time itself: a skewed clock matters only if a daylight-saving change lies
    within the skew, and naive local times are ambiguous around one anyway.
    """
    zone = connection.timezone if settings.USE_TZ else timezone.get_default_timezone()
    offset = datetime.now(UTC).astimezone(zone).utcoffset()
    return offset.total_seconds() if offset is not None else 0.0


def database_now(using: str) -> Expression:
    """The database's current time, as Django stores datetimes on that connection.

    PostgreSQL's ``timestamptz`` compares instants, so ``Now()`` fits whatever the
    session's time zone. SQLite and MySQL store naive text or ``DATETIME``s in the
    connection's zone (UTC with ``USE_TZ``, ``TIME_ZONE`` without): ``Now()`` there is
    UTC (SQLite) or the server's own zone (MySQL's ``CURRENT_TIMESTAMP``), which
    need not be either. So the database's UTC clock is read and, when the
    connection's zone is not UTC, shifted by that zone's offset (MySQL's named time
    zones need tables most servers lack; ``CONVERT_TZ`` would give NULL, and a NULL
    expiry would read as a free lease).
    """
    connection = connections[using]
    utc = connection.timezone_name == "UTC"
    if connection.vendor == "sqlite":
        # SQLite's 'now' is the C library's clock (the machine's), read in SQL so
        # it is the same clock whichever Python process asks.
        fmt = "'%%Y-%%m-%%d %%H:%%M:%%f', 'now'"
        if utc:
            return RawSQL(f"STRFTIME({fmt})", [], output_field=DateTimeField())
        return RawSQL(
            f"STRFTIME({fmt}, %s)", [f"{_offset_seconds(connection):+.0f} seconds"], output_field=DateTimeField()
        )
    if connection.vendor == "mysql":
        if utc:
            return RawSQL("UTC_TIMESTAMP(6)", [], output_field=DateTimeField())
        offset = _offset_seconds(connection)
        return RawSQL(
            "TIMESTAMPADD(MICROSECOND, %s, UTC_TIMESTAMP(6))", [int(offset * 1_000_000)], output_field=DateTimeField()
        )
    return Now()


def database_now_plus(using: str, seconds: float) -> Expression:
    """``database_now(using) + seconds``, computed by the database."""
    return ExpressionWrapper(database_now(using) + timedelta(seconds=seconds), output_field=DateTimeField())


@dataclass
class LeaseBusy(Exception):
    scope: str
    holder: str
    expires_at: str

    def __str__(self) -> str:
        return f"{self.scope} is being cleaned by {self.holder} (lease until {self.expires_at})"


class LeaseLost(Exception):
    """Another run took over this lease: ours expired before it was renewed."""


class Lease:
    def __init__(self, scope: str, holder: str, seconds: int, using: str | None = None):
        self.scope = scope
        self.holder = holder
        self.seconds = seconds
        self.using = using or router.db_for_write(CleanupLease)
        # Only for spacing renewals out: a monotonic clock, immune to clock steps.
        self._renewed_at = time.monotonic()

    def _manager(self):  # type: ignore[no-untyped-def]
        return CleanupLease.objects.using(self.using)

    def acquire(self) -> None:
        """Take the lease or raise LeaseBusy naming who has it."""
        try:
            with transaction.atomic(using=self.using):
                self._manager().get_or_create(scope=self.scope)
        except IntegrityError:
            pass  # another process created the row at the same moment
        # Free or expired by the database's clock, and the new expiry from that
        # same clock: this host's clock plays no part.
        now = database_now(self.using)
        taken = (
            self._manager()
            .filter(Q(scope=self.scope), Q(expires_at__isnull=True) | Q(expires_at__lt=now))
            .update(
                holder=self.holder,
                acquired_at=database_now(self.using),
                expires_at=database_now_plus(self.using, self.seconds),
            )
        )
        if taken != 1:
            row = self._manager().get(scope=self.scope)
            raise LeaseBusy(self.scope, row.holder, row.expires_at.isoformat() if row.expires_at else "?")
        self._renewed_at = time.monotonic()

    def renew(self, force: bool = False) -> None:
        """Extend the lease; cheap to call often (it writes at most every third of its length)."""
        now = time.monotonic()
        if not force and (now - self._renewed_at) < self.seconds / 3:
            return
        kept = (
            self._manager()
            .filter(scope=self.scope, holder=self.holder)
            .update(expires_at=database_now_plus(self.using, self.seconds))
        )
        if kept != 1:
            raise LeaseLost(f"the lease on {self.scope} expired and was taken over by another run")
        self._renewed_at = now

    def release(self) -> None:
        self._manager().filter(scope=self.scope, holder=self.holder).update(
            holder="", expires_at=None
        )
