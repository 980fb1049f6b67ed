from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from retention_admin.leases import Lease, LeaseBusy, LeaseLost
from retention_admin.models import CleanupLease

pytestmark = pytest.mark.django_db


def test_one_holder_at_a_time():
    first = Lease("policy:x", "a:1:1", 60)
    second = Lease("policy:x", "b:2:2", 60)
    first.acquire()
    with pytest.raises(LeaseBusy) as busy:
        second.acquire()
    assert busy.value.holder == "a:1:1"
    assert "policy:x is being cleaned by a:1:1" in str(busy.value)
    first.release()
    second.acquire()
    assert CleanupLease.objects.get(scope="policy:x").holder == "b:2:2"


def test_scopes_are_independent():
    Lease("policy:x", "a", 60).acquire()
    Lease("policy:y", "b", 60).acquire()
    assert CleanupLease.objects.count() == 2


def test_renew_extends_and_detects_takeover():
    lease = Lease("remainder", "a", 60)
    lease.acquire()
    before = CleanupLease.objects.get().expires_at
    lease.renew(force=True)
    assert CleanupLease.objects.get().expires_at >= before
    # Our lease expired and another run took it over:
    CleanupLease.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    Lease("remainder", "b", 60).acquire()
    with pytest.raises(LeaseLost):
        lease.renew(force=True)


def test_release_does_not_free_someone_elses_lease():
    mine = Lease("remainder", "a", 60)
    mine.acquire()
    CleanupLease.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    theirs = Lease("remainder", "b", 60)
    theirs.acquire()
    mine.release()
    assert CleanupLease.objects.get().holder == "b"
