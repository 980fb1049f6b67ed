"""Recommendations judge a keep-forever policy by what it governs, not by its runs.

A keep-forever policy never has due results, so every cleanup run reports it
``matched: 0``; that says nothing about whether it is idle.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from retention_admin.models import CleanupRun, RetentionPolicy, RetentionTier
from retention_admin.recommendations import idle_policies, recommend
from retention_admin.snapshots import take_snapshot

pytestmark = pytest.mark.django_db


def policy(name: str, *, priority: int, **fields: Any) -> RetentionPolicy:
    return RetentionPolicy.objects.create(
        name=name, priority=priority, tier=RetentionTier.objects.get(slug="daily"), **fields
    )


def runs_matching_nothing(*names: str, count: int = 3) -> None:
    # What the executor reports for a keep-forever policy in every real run.
    for _ in range(count):
        CleanupRun.objects.create(
            trigger="task", status="succeeded",
            report={"policies": [{"name": name, "matched": 0, "deleted": 0} for name in names]},
        )


def idle() -> dict[str, Any]:
    return {r.subject: r for r in recommend() if r.kind == "idle_policy"}


def test_keep_forever_policy_governing_results_is_not_idle(make_result):
    make_result(task_name="critical.ledger")
    RetentionPolicy.objects.filter(name="critical-forever").update(enabled=True)
    runs_matching_nothing("critical-forever")
    take_snapshot()

    assert "critical-forever" not in idle()


def test_keep_forever_policy_is_not_judged_by_runs_without_a_snapshot():
    RetentionPolicy.objects.filter(name="critical-forever").update(enabled=True)
    runs_matching_nothing("critical-forever", "failures-7d")

    found = idle()

    assert "critical-forever" not in found
    # A policy with a lifetime still is: nothing of it became due in three runs.
    assert found["failures-7d"].title == "Policy failures-7d matched nothing in its last 3 runs"


def test_keep_forever_policy_whose_pattern_matches_nothing_is_reported(make_result):
    make_result(task_name="reports.build")
    RetentionPolicy.objects.filter(name="critical-forever").update(enabled=True)
    runs_matching_nothing("critical-forever")
    take_snapshot()

    found = idle()["critical-forever"]

    assert found.title == "Policy critical-forever matches nothing"
    assert "no stored task name matches 'critical.*'" in found.detail


def test_keep_forever_policy_behind_one_that_takes_its_results_governs_nothing(make_result):
    make_result(task_name="reports.build")
    make_result(task_name="reports.build", status="FAILURE")
    make_result(task_name="mail.send")
    policy("reports-30d", priority=5, task_name_pattern="reports.*", keep_for=timedelta(days=30))
    policy("reports-forever", priority=100, task_name_pattern="reports.*", keep_for=None)
    # Behind a policy with a size minimum, the smaller results are still its own.
    policy(
        "mail-large-1d", priority=5, task_name_pattern="mail.*", min_result_bytes=10_000,
        keep_for=timedelta(days=1),
    )
    policy("mail-forever", priority=100, task_name_pattern="mail.*", keep_for=None)
    take_snapshot()

    found = idle()

    reports = found["reports-forever"]
    assert reports.title == "Policy reports-forever governs nothing"
    assert "taken by a policy ahead of it (reports-30d)" in reports.detail
    assert "mail-forever" not in found


def test_blank_pattern_keep_forever_policy_governs_results_without_a_task_name(make_result):
    make_result(task_name=None, status="FAILURE")  # failures-7d, ahead, takes this one
    make_result(task_name=None)
    policy("everything-forever", priority=100, keep_for=None)
    runs_matching_nothing("everything-forever")
    snapshot = take_snapshot()

    assert idle_policies(snapshot, list(RetentionPolicy.objects.in_precedence_order())) == []
