"""One run at a time per scope, across processes and hosts.

A lease is a row per scope. It is taken by a conditional UPDATE (free, or expired),
renewed while the run works, and released at the end; a holder that died leaves an
expired lease that the next run takes over. No row lock is held between statements,
so the lease table never blocks a writer.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.db import IntegrityError, router, transaction
from django.db.models import Q
from django.utils import timezone

from .models import CleanupLease


def make_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


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
        self._renewed_at = timezone.now()

    def _manager(self):  # type: ignore[no-untyped-def]
        return CleanupLease.objects.using(self.using)

    def acquire(self) -> None:
        """Take the lease or raise LeaseBusy naming who has it."""
        now = timezone.now()
        try:
            with transaction.atomic(using=self.using):
                self._manager().get_or_create(scope=self.scope)
        except IntegrityError:
            pass  # another process created the row at the same moment
        taken = (
            self._manager()
            .filter(Q(scope=self.scope), Q(expires_at__isnull=True) | Q(expires_at__lt=now))
            .update(holder=self.holder, acquired_at=now, expires_at=now + timedelta(seconds=self.seconds))
        )
        if taken != 1:
            row = self._manager().get(scope=self.scope)
            raise LeaseBusy(self.scope, row.holder, row.expires_at.isoformat() if row.expires_at else "?")
        self._renewed_at = now

    def renew(self, force: bool = False) -> None:
        """Extend the lease; cheap to call often (it writes at most every third of its length)."""
        now = timezone.now()
        if not force and (now - self._renewed_at) < timedelta(seconds=self.seconds / 3):
            return
        kept = (
            self._manager()
            .filter(scope=self.scope, holder=self.holder)
            .update(expires_at=now + timedelta(seconds=self.seconds))
        )
        if kept != 1:
            raise LeaseLost(f"the lease on {self.scope} expired and was taken over by another run")
        self._renewed_at = now

    def release(self) -> None:
        self._manager().filter(scope=self.scope, holder=self.holder).update(
            holder="", expires_at=None
        )
