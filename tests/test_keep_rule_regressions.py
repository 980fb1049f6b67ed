"""Regressions of the keep rule: each case here deleted, or miscounted, what must be kept."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone
from django_celery_results.models import TaskResult

from retention_admin.executor import Options, Selection, run_cleanup
from retention_admin.keep import InArray, kept_q
from retention_admin.models import ArchiveBatch, ArchivedResult, CleanupRun, RetentionHold, RetentionPolicy, RetentionTier

from .conftest import ids_left

DAY = timedelta(days=1)
pytestmark = pytest.mark.django_db


def only_policies(**policies: dict[str, Any]) -> None:
    """Disable the seeded policies and create these, enabled."""
    RetentionPolicy.objects.update(enabled=False)
    tier = RetentionTier.objects.get(slug="daily")
    for name, fields in policies.items():
        RetentionPolicy.objects.create(name=name, tier=tier, enabled=True, **fields)


def run(**options: Any) -> CleanupRun:
    return run_cleanup(Selection(), Options(**options))


class OnEachBatch:
    """A progress observer that does something after every batch the walk deletes."""

    wants_totals = False

    def __init__(self, action: Any):
        self.action, self.batches = action, 0

    def start(self, label: str, total: int | None) -> None:
        pass

    def advance(self, count: int) -> None:
        self.batches += 1
        self.action(self.batches)

    def finish(self) -> None:
        pass


@pytest.mark.parametrize("name", ["critical.x\ny", "critical.\n", "critical.x\r", "critical.\r\n"])
def test_keep_forever_protects_names_with_line_breaks(make_result, name):
    only_policies(critical={"task_name_pattern": "critical.*", "keep_for": None, "priority": 1})
    make_result(task_id="kept", task_name=name, age=400 * DAY)
    make_result(task_id="gone", task_name="other\ncritical.x", age=400 * DAY)

    dry = run(dry_run=True)
    assert dry.report["unmatched"]["matched"] == 1
    run()
    assert ids_left() == {"kept"}


def test_nameless_results_are_booked_to_their_policy_in_dry_and_real_runs(make_result):
    only_policies(
        critical={"task_name_pattern": "critical.*", "keep_for": None, "priority": 1},
        failures={"statuses": ["FAILURE"], "keep_for": 7 * DAY, "priority": 5},
    )
    for i in range(3):
        make_result(task_id=f"nameless-failure-{i}", task_name=None, status="FAILURE", age=30 * DAY)
    make_result(task_id="nameless-success", task_name=None, status="SUCCESS", age=30 * DAY)

    dry = run(dry_run=True).report
    real = run().report

    def counts(report: dict[str, Any], key: str) -> dict[str, int]:
        return {p["name"]: p[key] for p in report["policies"]} | {"unmatched": report["unmatched"][key]}

    assert counts(dry, "matched") == {"critical": 0, "failures": 3, "unmatched": 1}
    assert counts(real, "deleted") == {"critical": 0, "failures": 3, "unmatched": 1}
    assert ids_left() == set()


def test_a_result_restored_during_a_walk_is_not_deleted_by_it(make_result):
    only_policies()
    for i in range(6):
        make_result(task_id=f"old-{i}", age=(10 - i) * DAY)

    def restore(batch_number: int) -> None:
        if batch_number != 1:
            return
        # As restore_results does: the row and its batch's grace in one go, between
        # two batches of the running walk, with a date_done the walk has not reached.
        TaskResult.objects.create(task_id="restored", status="SUCCESS", result='"x"')
        TaskResult.objects.filter(task_id="restored").update(date_done=timezone.now() - 3 * DAY)
        batch = ArchiveBatch.objects.create(
            policy_name="p", status=ArchiveBatch.Status.RESTORED, grace_until=timezone.now() + 7 * DAY
        )
        ArchivedResult.objects.create(batch=batch, task_id="restored", date_done=timezone.now() - 3 * DAY)

    run(batch_size=2, progress=OnEachBatch(restore))
    assert ids_left() == {"restored"}


def test_a_hold_placed_during_a_walk_protects_at_once(make_result):
    only_policies()
    for i in range(6):
        make_result(task_id=f"old-{i}", age=(10 - i) * DAY)

    def hold(batch_number: int) -> None:
        if batch_number == 1:
            RetentionHold.objects.create(task_id="old-5", reason="incident")

    run(batch_size=2, progress=OnEachBatch(hold))
    assert ids_left() == {"old-5"}


def _skip_deleting(task_id: str) -> None:
    """A trigger that makes the database skip deleting one row: as if it changed
    between being picked and being deleted (SQLite and PostgreSQL can do this)."""
    table = TaskResult._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute(
                f"CREATE TRIGGER keep_one BEFORE DELETE ON {table} "
                f"WHEN old.task_id = '{task_id}' BEGIN SELECT RAISE(IGNORE); END"
            )
        else:
            cursor.execute(
                "CREATE FUNCTION keep_one() RETURNS trigger AS $$ BEGIN "
                f"IF old.task_id = '{task_id}' THEN RETURN NULL; END IF; RETURN old; END $$ LANGUAGE plpgsql"
            )
            cursor.execute(f"CREATE TRIGGER keep_one BEFORE DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION keep_one()")


def test_a_short_batch_does_not_end_the_walk(make_result):
    if connection.vendor not in ("sqlite", "postgresql"):
        pytest.skip("MariaDB triggers cannot skip a row")
    only_policies()
    for i in range(7):
        make_result(task_id=f"old-{i}", age=(10 - i) * DAY)
    # The oldest row stays: the first batch of two deletes one row, not two.
    _skip_deleting("old-0")

    run(batch_size=2)
    assert ids_left() == {"old-0"}


@pytest.mark.parametrize("holds", [1, 100_000])
def test_holds_on_another_database_are_one_parameter(make_result, holds):
    """Ids read from another database go to the DELETE as one array parameter:
    100,000 held ids used to be 100,000 literals (SQLite refuses past 32,766)."""
    make_result(task_id="held")
    make_result(task_id="free")
    ids = ["held", *(f"other-{i}" for i in range(holds - 1))]
    kept = TaskResult.objects.filter(InArray("task_id", ids))
    assert set(kept.values_list("task_id", flat=True)) == {"held"}
    assert set(TaskResult.objects.exclude(InArray("task_id", ids)).values_list("task_id", flat=True)) == {"free"}


def test_kept_q_names_holds_grace_and_waiting_chords(make_result):
    from django_celery_results.models import ChordCounter

    now = timezone.now()
    for task_id in ("held", "lapsed", "graced", "grace-over", "chord-part", "free"):
        make_result(task_id=task_id)
    RetentionHold.objects.create(task_id="held", reason="r")
    RetentionHold.objects.create(task_id="lapsed", reason="r", until=now - timedelta(microseconds=1))
    in_grace = ArchiveBatch.objects.create(policy_name="p", grace_until=now + DAY)
    over = ArchiveBatch.objects.create(policy_name="p", grace_until=now)
    ArchivedResult.objects.create(batch=in_grace, task_id="graced")
    ArchivedResult.objects.create(batch=over, task_id="grace-over")
    ChordCounter.objects.create(group_id="g", sub_tasks='[[["chord-part", null], null], [["queued", null], null]]', count=2)

    kept = set(TaskResult.objects.filter(kept_q(now, using="default")).values_list("task_id", flat=True))
    assert kept == {"held", "graced", "chord-part"}


def test_explain_and_the_walk_agree_at_the_cutoff_and_on_waiting_chords(make_result):
    import time_machine
    from django_celery_results.models import ChordCounter

    from retention_admin.explain import explain

    only_policies(day={"keep_for": DAY, "priority": 1})
    now = timezone.now()
    with time_machine.travel(now, tick=False):
        make_result(task_id="at-cutoff", age=DAY)
        make_result(task_id="just-older", age=DAY + timedelta(microseconds=1))
        make_result(task_id="just-younger", age=DAY - timedelta(microseconds=1))
        make_result(task_id="chord-part", age=3 * DAY)
        ChordCounter.objects.create(group_id="g", sub_tasks='[[["chord-part", null], null], [["q", null], null]]', count=1)

        assert "becomes due" in explain("at-cutoff").summary(now)
        assert "was due" in explain("just-older").summary(now)
        chord = explain("chord-part")
        assert chord.chord_waiting and chord.protected
        assert "while its chord waits" in chord.summary(now)

        run()
    assert ids_left() == {"at-cutoff", "just-younger", "chord-part"}
