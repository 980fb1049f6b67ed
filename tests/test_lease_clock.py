"""Leases are judged by the database's clock, never by the clock of the host that asks.

A host whose clock runs ahead of the others must not see a live lease as expired
(and take it over while its holder still works); one whose clock lags must not
see an expired lease as live. time-machine moves this process's clock only: the
database (SQLite's C-level clock included) keeps the real time, as another
host's database would.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
import time_machine
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from retention_admin.leases import Lease, LeaseBusy, LeaseLost
from retention_admin.models import CleanupLease

pytestmark = pytest.mark.django_db

HOUR = timedelta(hours=1)


def expires_at(scope: str) -> datetime:
    value = CleanupLease.objects.get(scope=scope).expires_at
    assert value is not None
    return value


def test_a_host_whose_clock_runs_an_hour_ahead_cannot_take_a_live_lease():
    Lease("policy:x", "host-a:1:1", 60).acquire()

    with time_machine.travel(timezone.now() + HOUR, tick=True), pytest.raises(LeaseBusy) as busy:
        Lease("policy:x", "host-b:2:2", 60).acquire()

    assert busy.value.holder == "host-a:1:1"
    assert CleanupLease.objects.get(scope="policy:x").holder == "host-a:1:1"


def test_a_host_whose_clock_lags_an_hour_takes_over_an_expired_lease():
    Lease("policy:x", "host-a:1:1", 60).acquire()
    CleanupLease.objects.update(expires_at=timezone.now() - timedelta(seconds=5))  # its holder died

    with time_machine.travel(timezone.now() - HOUR, tick=True):
        Lease("policy:x", "host-b:2:2", 60).acquire()

    assert CleanupLease.objects.get(scope="policy:x").holder == "host-b:2:2"


def test_expiry_is_set_by_the_database_clock_on_acquire_and_renew():
    # A host an hour ahead writes an expiry of the database's now + 60 s, not its own.
    with time_machine.travel(timezone.now() + HOUR, tick=True):
        lease = Lease("remainder", "host-b:2:2", 60)
        lease.acquire()
    real_now = timezone.now()
    assert real_now + timedelta(seconds=50) < expires_at("remainder") < real_now + timedelta(seconds=70)

    CleanupLease.objects.update(expires_at=real_now + timedelta(seconds=5))
    with time_machine.travel(real_now + HOUR, tick=True):
        lease.renew(force=True)
    assert real_now + timedelta(seconds=50) < expires_at("remainder") < timezone.now() + timedelta(seconds=70)


def test_a_renewal_by_a_host_an_hour_behind_does_not_resurrect_a_lost_lease():
    mine = Lease("remainder", "host-a:1:1", 60)
    mine.acquire()
    CleanupLease.objects.update(expires_at=timezone.now() - timedelta(seconds=5))
    Lease("remainder", "host-b:2:2", 60).acquire()
    with time_machine.travel(timezone.now() - HOUR, tick=True), pytest.raises(LeaseLost):
        mine.renew(force=True)
    assert CleanupLease.objects.get().holder == "host-b:2:2"


@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Asia/Kolkata"])
def test_database_expiries_are_in_the_form_django_stores_without_use_tz(zone):
    # With USE_TZ = False Django stores naive local (TIME_ZONE) times; the database's
    # expiry must be one too, or every ORM-written expiry (and the admin) would be
    # off by the zone's offset.
    with override_settings(USE_TZ=False, TIME_ZONE=zone):
        lease = Lease("policy:naive", "host-a:1:1", 60)
        lease.acquire()
        now = timezone.now()
        assert timezone.is_naive(now)
        value = expires_at("policy:naive")
        assert timezone.is_naive(value)
        assert now + timedelta(seconds=50) < value < now + timedelta(seconds=70), (now, value)
        acquired = CleanupLease.objects.get(scope="policy:naive").acquired_at
        assert acquired is not None and abs(acquired - now) < timedelta(seconds=10), (now, acquired)

        # A live lease by the ORM's own clock is busy; an expired one is taken.
        with pytest.raises(LeaseBusy):
            Lease("policy:naive", "host-b:2:2", 60).acquire()
        CleanupLease.objects.update(expires_at=timezone.now() - timedelta(seconds=5))
        Lease("policy:naive", "host-b:2:2", 60).acquire()
        assert CleanupLease.objects.get(scope="policy:naive").holder == "host-b:2:2"
        with pytest.raises(LeaseLost):
            lease.renew(force=True)


def test_expiries_are_in_the_form_django_stores_with_use_tz():
    Lease("policy:aware", "host-a:1:1", 60).acquire()
    now = timezone.now()
    value = expires_at("policy:aware")
    assert timezone.is_aware(value)
    assert now + timedelta(seconds=50) < value < now + timedelta(seconds=70), (connection.vendor, now, value)
