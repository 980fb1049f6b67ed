"""Policy semantics as the executor applies them, on whichever database the suite runs."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.db import connection
from django.db.models import Q
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_celery_results.models import ChordCounter, GroupResult, TaskResult

from retention_admin.executor import CleanupError, Options, Selection, run_cleanup
from retention_admin.models import (
    ChordCounterSighting,
    CleanupLease,
    CleanupRun,
    RetentionHold,
    RetentionPolicy,
    RetentionTier,
)

from .conftest import ids_left

DAY = timedelta(days=1)
pytestmark = pytest.mark.django_db


def policy(name: str, **fields: object) -> RetentionPolicy:
    fields.setdefault("tier", RetentionTier.objects.get(slug="daily"))
    fields.setdefault("priority", 100)
    return RetentionPolicy.objects.create(name=name, **fields)


def run(**kwargs: object) -> CleanupRun:
    selection = Selection(
        policies=list(kwargs.pop("policies", [])),  # type: ignore[call-overload]
        tiers=list(kwargs.pop("tiers", [])),  # type: ignore[call-overload]
    )
    return run_cleanup(selection, Options(**kwargs))  # type: ignore[arg-type]


@pytest.fixture
def expires(celery_conf):
    """Set Celery's result_expires for one test."""

    def set_(value: object) -> None:
        celery_conf.result_expires = value

    return set_


def test_lowest_priority_wins_and_each_result_has_one_policy(make_result):
    policy("reports-long", task_name_pattern="reports.*", keep_for=30 * DAY, priority=10)
    policy("reports-short", task_name_pattern="reports.*", keep_for=2 * DAY, priority=20)
    make_result(task_id="r-10d", task_name="reports.build", age=10 * DAY)
    make_result(task_id="r-40d", task_name="reports.build", age=40 * DAY)

    report = run().report

    assert ids_left() == {"r-10d"}
    by_name = {p["name"]: p for p in report["policies"]}
    assert by_name["reports-long"]["deleted"] == 1
    assert by_name["reports-short"]["matched"] == 0  # shadowed: it governs nothing


def test_ties_in_priority_are_broken_by_name(make_result):
    policy("b-short", task_name_pattern="x.*", keep_for=DAY, priority=5)
    policy("a-long", task_name_pattern="x.*", keep_for=30 * DAY, priority=5)
    make_result(task_id="x", task_name="x.y", age=3 * DAY)
    run()
    assert ids_left() == {"x"}  # a-long governs


def test_holds_protect_until_they_end(make_result):
    make_result(task_id="held", age=3 * DAY)
    make_result(task_id="hold-ended", age=3 * DAY)
    make_result(task_id="free", age=3 * DAY)
    RetentionHold.objects.create(task_id="held", reason="incident 42")
    RetentionHold.objects.create(
        task_id="hold-ended", reason="old", until=timezone.now() - timedelta(minutes=1)
    )

    report = run().report

    assert ids_left() == {"held"}
    assert report["unmatched"] == {"matched": 2, "deleted": 2}


def test_keep_forever_protects_even_with_days(make_result):
    policy("critical", task_name_pattern="critical.*", keep_for=None, priority=1)
    make_result(task_id="c", task_name="critical.ledger", age=3000 * DAY)
    make_result(task_id="o", task_name="other", age=3 * DAY)

    report = run(days=1).report

    assert ids_left() == {"c"}
    assert report["policies"][0] == {
        "name": "critical", "tier": "daily", "matched": 0, "deleted": 0, "archived": 0, "bytes": 0,
    }


def test_remainder_follows_result_expires(make_result, expires):
    expires(timedelta(hours=12))
    make_result(task_id="13h", age=timedelta(hours=13))
    make_result(task_id="11h", age=timedelta(hours=11))
    run()
    assert ids_left() == {"11h"}


def test_result_expires_none_keeps_the_remainder(make_result, expires):
    expires(None)
    make_result(task_id="old", age=400 * DAY)
    run_ = run()
    assert ids_left() == {"old"}
    assert any("result_expires is None" in note for note in run_.notes)


def test_seeded_failure_policy_keeps_failures_seven_days(make_result):
    make_result(task_id="fail-3d", status="FAILURE", age=3 * DAY)
    make_result(task_id="fail-8d", status="FAILURE", age=8 * DAY)
    make_result(task_id="ok-3d", status="SUCCESS", age=3 * DAY)
    run()
    assert ids_left() == {"fail-3d"}


def test_days_overrides_every_selected_policy_and_the_remainder(make_result):
    make_result(task_id="fail-3d", status="FAILURE", age=3 * DAY)
    make_result(task_id="ok-3d", age=3 * DAY)
    make_result(task_id="ok-1d", age=timedelta(hours=30))
    run(days=2)
    assert ids_left() == {"ok-1d"}


def test_size_matcher_uses_bytes_not_characters(make_result):
    policy("big", min_result_bytes=10, keep_for=timedelta(hours=1), priority=1)
    make_result(task_id="small", result='"éé"', age=2 * timedelta(hours=1))  # 6 bytes
    make_result(task_id="big", result='"ééééé"', age=2 * timedelta(hours=1))  # 12 bytes, 7 chars
    run(policies=["big"])
    assert ids_left() == {"small"}


def test_dry_run_changes_nothing_and_reports_what_would_go(make_result):
    make_result(task_id="old-1", age=3 * DAY, result='"x"')
    make_result(task_id="old-2", age=3 * DAY)
    make_result(task_id="new", age=timedelta(hours=1))
    GroupResult.objects.create(group_id="g", content_type="application/json", content_encoding="utf-8")
    GroupResult.objects.filter(group_id="g").update(date_done=timezone.now() - 3 * DAY)

    run_ = run(dry_run=True)

    assert ids_left() == {"old-1", "old-2", "new"}
    assert GroupResult.objects.count() == 1
    assert run_.dry_run and run_.status == "succeeded"
    assert run_.report["unmatched"] == {"matched": 2, "deleted": 0}
    assert run_.report["totals"]["bytes"] > 0
    assert any("1 expired group results would be deleted" in n for n in run_.notes)


def test_tier_selection_runs_only_that_tier(make_result):
    weekly = RetentionTier.objects.get(slug="weekly")
    policy("weekly-x", task_name_pattern="x.*", keep_for=DAY, tier=weekly, priority=1)
    policy("daily-y", task_name_pattern="y.*", keep_for=DAY, priority=2)
    make_result(task_id="x", task_name="x.a", age=3 * DAY)
    make_result(task_id="y", task_name="y.a", age=3 * DAY)
    make_result(task_id="z", task_name="z.a", age=3 * DAY)

    report = run(tiers=["weekly"]).report

    assert ids_left() == {"y", "z"}  # no remainder without "everything"
    assert [p["name"] for p in report["policies"]] == ["weekly-x"]


def _taskresult_deletes(queries: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if "DELETE FROM" in q["sql"] and "taskresult" in q["sql"]]


def _window_ends(queries: CaptureQueriesContext, limit: int) -> list[str]:
    """PostgreSQL's reads of where each date_done window ends (see batches.py)."""
    return [
        q["sql"] for q in queries.captured_queries
        if q["sql"].startswith("SELECT") and "taskresult" in q["sql"] and f"OFFSET {limit} LIMIT 1" in q["sql"]
    ]


def test_batches_are_separate_deletes_in_date_done_order(make_result, vendor):
    for i in range(7):
        make_result(task_id=f"t{i}", age=(10 - i) * DAY)
    with CaptureQueriesContext(connection) as queries:
        report = run(batch_size=3, max_runtime_seconds=None).report
    deletes = _taskresult_deletes(queries)
    # failures-7d and the remainder share one walk: 3 + 3 + 1.
    assert len(deletes) == 3
    if vendor == "postgresql":
        # Windows of date_done: the first open below, the last open above.
        assert len(_window_ends(queries, 3)) == 3
        assert '"date_done" >=' not in deletes[0] and all('"date_done" >=' in d for d in deletes[1:])
    else:
        assert all("ORDER BY" in d and "date_done" in d for d in deletes)
    assert report["unmatched"]["deleted"] == 7


def test_an_interrupted_walk_took_the_oldest_rows_first(make_result):
    for i in range(6):
        make_result(task_id=f"t{i}", age=(10 - i) * DAY)
    first = run(batch_size=2, sleep_seconds=0.3, max_runtime_seconds=0.2)
    assert first.status == "partial" and first.deleted == 2
    assert ids_left() == {f"t{i}" for i in range(2, 6)}


def test_the_cursor_walks_past_rows_with_the_same_date_done(make_result, vendor):
    """Ties on date_done are ordered by id: a batch ending inside a tie resumes after it."""
    same = timezone.now().replace(microsecond=0) - 3 * DAY  # no fraction: the plainest text form
    for i in range(7):
        make_result(task_id=f"tie{i}")
    TaskResult.objects.update(date_done=same)
    make_result(task_id="later", age=2 * DAY)
    with CaptureQueriesContext(connection) as queries:
        report = run(batch_size=3).report
    deletes = _taskresult_deletes(queries)
    assert report["unmatched"]["deleted"] == 8
    assert ids_left() == set()
    ordered = [d for d in deletes if "ORDER BY" in d]
    if vendor == "postgresql":
        # Seven rows at one date_done make no window of three: they are picked in
        # id order, 3 + 3; the last tie and "later" fit the final window.
        assert len(ordered) == 2
    else:
        assert len(deletes) == len(ordered) == 3  # 3 + 3 + 2: nothing deleted twice, nothing skipped


def test_postgresql_windows_count_every_scope_and_estimate_bytes_from_a_sample(make_result, vendor):
    from retention_admin import batches

    if vendor != "postgresql":
        pytest.skip("date_done windows are PostgreSQL's walk")
    policy("reports-2d", task_name_pattern="reports.*", keep_for=2 * DAY, priority=1)
    policy("mail-2d", task_name_pattern="mail.*", keep_for=2 * DAY, priority=2)
    windows = batches.SAMPLE_FIRST + 6
    for i in range(windows * 2):
        # Within a scope every row has the same size: an estimate from the mean is exact.
        make_result(task_id=f"r{i:03d}", task_name="reports.build", result='"' + "r" * 500 + '"', age=(3 + i / 10) * DAY)
        make_result(task_id=f"m{i:03d}", task_name="mail.send", result='"m"', age=(3 + i / 10 + 0.05) * DAY)
    dry = {p["name"]: p for p in run(dry_run=True).report["policies"]}
    with CaptureQueriesContext(connection) as queries:
        report = run(batch_size=4).report
    by_name = {p["name"]: p for p in report["policies"]}
    assert ids_left() == set()
    assert by_name["reports-2d"]["deleted"] == by_name["mail-2d"]["deleted"] == windows * 2
    deletes = _taskresult_deletes(queries)
    returning = [d for d in deletes if "RETURNING" in d]
    plain = [d for d in deletes if "RETURNING" not in d]
    assert len(returning) == batches.SAMPLE_FIRST  # the sampled windows (the tenth is not one)
    # The others: one DELETE for each scope that can have rows there: reports-2d,
    # mail-2d and the remainder; the seeded failures-7d cannot, in windows that
    # start less than 7 days ago.
    assert len(plain) == 3 * (windows - batches.SAMPLE_FIRST)
    for name in ("reports-2d", "mail-2d"):
        assert by_name[name]["bytes"] == dry[name]["bytes"] > 0
    assert by_name["reports-2d"]["bytes"] > 3 * by_name["mail-2d"]["bytes"]  # each at its own mean


def test_policies_and_remainder_share_one_walk_each_counted_for_itself(make_result, vendor):
    """One DELETE per batch serves every plain scope; each keeps its own cutoff and count."""
    policy("reports-2d", task_name_pattern="reports.*", keep_for=2 * DAY, priority=1)
    policy("mail-10d", task_name_pattern="mail.*", keep_for=10 * DAY, priority=2)
    policy("audit-forever", task_name_pattern="audit.*", keep_for=None, priority=3)
    for i in range(12):
        age = (i + 0.5) * DAY
        make_result(task_id=f"r{i}", task_name="reports.build", age=age)
        make_result(task_id=f"m{i}", task_name="mail.send", age=age)
        make_result(task_id=f"a{i}", task_name="audit.log", age=age)
        make_result(task_id=f"x{i}", task_name="misc.job", age=age)
    RetentionHold.objects.create(task_id="r7", reason="kept for a ticket")
    with CaptureQueriesContext(connection) as queries:
        report = run(batch_size=5).report
    deletes = _taskresult_deletes(queries)

    reports_kept = {f"r{i}" for i in range(2)} | {"r7"}
    mail_kept = {f"m{i}" for i in range(10)}
    misc_kept = {"x0"}  # result_expires is one day in the test project
    assert ids_left() == reports_kept | mail_kept | misc_kept | {f"a{i}" for i in range(12)}
    by_name = {p["name"]: p for p in report["policies"]}
    assert by_name["reports-2d"]["deleted"] == 9
    assert by_name["mail-10d"]["deleted"] == 2
    assert by_name["audit-forever"]["deleted"] == 0
    assert report["unmatched"] == {"matched": 11, "deleted": 11}
    assert report["totals"]["deleted"] == 22
    if vendor == "postgresql":
        # 44 rows older than the latest cutoff (a day), in windows of 5: one walk.
        assert len(_window_ends(queries, 5)) == 9
    else:
        # 22 rows in batches of 5: five DELETEs for all scopes together, not one walk each.
        assert len(deletes) == 5
    assert by_name["reports-2d"]["bytes"] > 0 and by_name["mail-10d"]["bytes"] > 0


def test_a_busy_scope_is_left_out_of_the_shared_walk(make_result):
    policy("reports-2d", task_name_pattern="reports.*", keep_for=2 * DAY, priority=1)
    make_result(task_id="r", task_name="reports.build", age=5 * DAY)
    make_result(task_id="x", task_name="misc.job", age=5 * DAY)
    CleanupLease.objects.create(
        scope="policy:reports-2d", holder="otherhost:9:z", expires_at=timezone.now() + timedelta(minutes=5)
    )
    run_ = run()
    assert run_.status == "partial"
    assert run_.options["busy"] == ["policy:reports-2d"]
    assert ids_left() == {"r"}  # the busy policy's result waits; the remainder's went
    assert CleanupLease.objects.filter(holder="").count() >= 2  # the others' leases released


@pytest.mark.django_db(transaction=True)
def test_postgresql_delete_batches_commit_without_waiting_for_the_disk(make_result, vendor):
    from django.db import transaction

    if vendor != "postgresql":
        pytest.skip("synchronous_commit is a PostgreSQL setting")
    for i in range(5):
        make_result(task_id=f"t{i}", age=3 * DAY)
    with CaptureQueriesContext(connection) as queries:
        run(batch_size=2)
    statements = [q["sql"] for q in queries.captured_queries]
    deletes = [i for i, sql in enumerate(statements) if sql.startswith("WITH deleted")]
    assert len([i for i in deletes if "taskresult" in statements[i]]) == 3  # and one of group results
    assert all(statements[i - 1] == "SET LOCAL synchronous_commit TO OFF" for i in deletes)
    with connection.cursor() as cursor:  # local to each batch: the session keeps its setting
        cursor.execute("SHOW synchronous_commit")
        assert cursor.fetchone()[0] == "on"
    assert ids_left() == set()

    # Inside a caller's transaction the setting would outlive the batch: not used.
    make_result(task_id="late", age=3 * DAY)
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        run()
        with connection.cursor() as cursor:
            cursor.execute("SHOW synchronous_commit")
            assert cursor.fetchone()[0] == "on"
    assert not any("synchronous_commit TO OFF" in q["sql"] for q in queries.captured_queries)
    assert ids_left() == set()


def test_max_runtime_stops_cleanly_and_the_next_run_continues(make_result):
    for i in range(6):
        make_result(task_id=f"t{i}", age=3 * DAY)

    first = run(batch_size=2, sleep_seconds=0.3, max_runtime_seconds=0.2)

    assert first.status == "partial"
    assert 0 < first.deleted < 6
    assert len(ids_left()) == 6 - first.deleted
    second = run(batch_size=2)
    assert second.status == "succeeded"
    assert ids_left() == set()


def test_busy_lease_skips_the_scope_and_names_the_holder(make_result):
    make_result(task_id="old", age=3 * DAY)
    CleanupLease.objects.create(
        scope="remainder", holder="otherhost:123:abc", expires_at=timezone.now() + timedelta(minutes=5)
    )
    run_ = run(policies=[], tiers=[])
    assert run_.status == "partial"  # the failure policy ran, the remainder was skipped
    assert run_.options["busy"] == ["remainder"]
    assert any("otherhost:123:abc" in note for note in run_.notes)
    assert ids_left() == {"old"}


def test_stale_lease_is_taken_over(make_result):
    make_result(task_id="old", age=3 * DAY)
    CleanupLease.objects.create(
        scope="remainder", holder="dead:1:x", expires_at=timezone.now() - timedelta(seconds=1)
    )
    assert run().status == "succeeded"
    assert ids_left() == set()
    assert CleanupLease.objects.get(scope="remainder").holder == ""  # released


def test_every_run_is_recorded(make_result):
    make_result(age=3 * DAY)
    run(dry_run=True)
    run()
    assert list(CleanupRun.objects.order_by("id").values_list("dry_run", "status", "deleted")) == [
        (True, "succeeded", 0),
        (False, "succeeded", 1),
    ]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"days": 0}, "--days must be 1 or more"),
        ({"batch_size": 0}, "--batch-size must be 1 or more"),
        ({"sleep_seconds": -1}, "--sleep must be 0 or more"),
        ({"database": "nope"}, "Unknown database alias 'nope'"),
        ({"tiers": ["hourly"]}, "No retention tier 'hourly'"),
        ({"policies": ["nope"]}, "No retention policy named 'nope'"),
        ({"policies": ["api-6h"]}, "is disabled"),
    ],
)
def test_bad_selection_is_refused_before_anything_changes(make_result, options, message):
    make_result(age=3 * DAY)
    with pytest.raises(CleanupError, match=message):
        run(**options)
    assert TaskResult.objects.count() == 1
    assert not CleanupRun.objects.exists()


def test_expired_groups_are_deleted_unless_held():
    for group_id in ("old", "held", "new"):
        GroupResult.objects.create(group_id=group_id, content_type="a", content_encoding="b")
    GroupResult.objects.exclude(group_id="new").update(date_done=timezone.now() - 3 * DAY)
    RetentionHold.objects.create(task_id="held", reason="keep the group")

    report = run().report

    assert set(GroupResult.objects.values_list("group_id", flat=True)) == {"held", "new"}
    assert report["groups"] == {"deleted": 1}


def _chord(group_id: str, task_ids: list[str], count: int = 0) -> ChordCounter:
    sub_tasks = json.dumps([[[tid, None], None] for tid in task_ids])
    return ChordCounter.objects.create(group_id=group_id, sub_tasks=sub_tasks, count=count or len(task_ids))


def test_orphaned_chord_counters(make_result):
    make_result(task_id="done-old-1", age=3 * DAY, status="SUCCESS")
    make_result(task_id="done-old-2", age=3 * DAY, status="FAILURE")
    make_result(task_id="running", age=3 * DAY, status="STARTED")
    make_result(task_id="done-new", age=timedelta(hours=1))
    _chord("finished-long-ago", ["done-old-1", "done-old-2"])
    _chord("still-running", ["done-old-1", "running"])
    _chord("finished-recently", ["done-old-1", "done-new"])
    _chord("queued-no-rows-yet", ["never-ran-1", "never-ran-2"])

    # Held results are kept, but the counter with old results still goes (its rows stay).
    report = run(policies=["failures-7d"], tiers=[]).report  # selection without remainder
    assert report["chord_counters"] == {"deleted": 0}

    report = run().report
    left = set(ChordCounter.objects.values_list("group_id", flat=True))
    assert left == {"still-running", "finished-recently", "queued-no-rows-yet"}
    assert report["chord_counters"] == {"deleted": 1}

    # A counter with a header task that has no result row may still complete (the
    # task may be queued): it stays however long it has been seen waiting.
    ChordCounterSighting.objects.filter(group_id="queued-no-rows-yet").update(
        first_seen=timezone.now() - 30 * DAY
    )
    report = run().report
    assert set(ChordCounter.objects.values_list("group_id", flat=True)) == {
        "still-running", "finished-recently", "queued-no-rows-yet",
    }
    assert any("1 chord counters kept: a header task has no result yet" in note for note in report_notes())


def report_notes() -> list[str]:
    return CleanupRun.objects.latest("pk").notes


def test_a_chord_with_a_queued_part_keeps_its_counter_and_finished_parts(make_result):
    # Two parts finished three days ago; the third is still queued (no row yet).
    for tid in ("part-1", "part-2"):
        make_result(task_id=tid, age=3 * DAY)
    _chord("header", ["part-1", "part-2", "part-3"], count=1)

    run()

    # The callback will read every part's result when part-3 reports: all of it stays.
    assert ChordCounter.objects.filter(group_id="header").exists()
    assert set(TaskResult.objects.values_list("task_id", flat=True)) == {"part-1", "part-2"}

    # Once the chord completed (django-celery-results deletes the counter), its
    # finished parts are ordinary results again.
    ChordCounter.objects.all().delete()
    run()
    assert not TaskResult.objects.exists()


def test_dry_run_does_not_record_chord_sightings():
    _chord("g", ["a"])
    run(dry_run=True)
    assert not ChordCounterSighting.objects.exists()


def test_chord_counters_are_judged_before_their_header_results_are_deleted(make_result):
    make_result(task_id="h1", age=3 * DAY)
    make_result(task_id="h2", age=3 * DAY)
    _chord("chord", ["h1", "h2"])

    dry = run(dry_run=True)
    assert "dry run: 1 orphaned chord counters would be deleted" in dry.notes

    real = run()
    assert real.report["chord_counters"] == {"deleted": 1}  # the same as the dry run said
    # Its parts were kept by the counter when the run started: they go in the next
    # run, so that the dry run and the real run count the same results.
    assert real.report["unmatched"]["deleted"] == dry.report["unmatched"]["matched"] == 0
    assert not ChordCounter.objects.exists()
    assert run().report["unmatched"]["deleted"] == 2


def test_select_then_delete_fallback_for_databases_without_delete_returning(make_result):
    # MySQL has no DELETE ... RETURNING; its path is plain ORM, so it runs anywhere.
    from django.db.models import Case, IntegerField, Value, When

    from retention_admin import batches

    made = [make_result(task_id=f"t{i}", age=(3 + i) * DAY) for i in range(3)]
    make_result(task_id="recent")
    due = Q(date_done__lt=timezone.now() - DAY)
    picked = TaskResult.objects.filter(due).order_by("date_done", "id")

    label = Case(When(task_id="t2", then=Value(1)), default=Value(0), output_field=IntegerField())
    batch = batches._select_then_delete(picked, due, 2, Value(7), label)

    assert batch.deleted == 2 and batch.bytes == 14
    assert batch.by_label == {1: (1, 7), 0: (1, 7)}  # counted per scope
    assert ids_left() == {"t0", "recent"}  # the two oldest went first
    assert batch.last == (made[1].date_done, made[1].pk)  # the newer of the two: the cursor


def test_batch_size_and_pause_default_per_database(make_result):
    from retention_admin import conf

    run_ = run()
    expected = conf.DATABASE_DEFAULTS[connection.vendor]
    assert (run_.options["batch_size"], run_.options["sleep_seconds"]) == expected
    with override_settings(RETENTION_ADMIN={"BATCH_SIZE": 10, "SLEEP_SECONDS": 0}):
        run_ = run()
    assert (run_.options["batch_size"], run_.options["sleep_seconds"]) == (10, 0)
    assert (run(batch_size=3, sleep_seconds=0.0).options["batch_size"]) == 3


def test_a_run_that_fails_midway_still_reports_what_it_deleted(make_result, archive_dir):
    from retention_admin.executor import CleanupFailed

    # Archive policies run one by one before the shared walk of the plain ones.
    policy("first", task_name_pattern="a.*", keep_for=DAY, priority=1, archive=True)
    policy("broken", task_name_pattern="b.*", keep_for=DAY, priority=2)
    RetentionPolicy.objects.filter(name="broken").update(task_name_pattern="b.[x")
    make_result(task_id="a", task_name="a.x", age=3 * DAY)
    make_result(task_id="x", task_name="x.y", age=3 * DAY)
    with pytest.raises(CleanupFailed) as excinfo:
        run()
    recorded = excinfo.value.run
    assert recorded.status == "failed" and recorded.deleted == 1
    assert recorded.report["policies"][0]["deleted"] == 1
    assert "is never closed" in recorded.error
    # The shared walk never started: with a policy that cannot be read, nothing
    # can tell which results it governs, so the remainder keeps its result too.
    assert ids_left() == {"x"}
