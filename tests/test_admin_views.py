"""The admin's pages: policy changelist and preview, confirmation, tiers, explain, holds, runs, archives."""

from __future__ import annotations

import gzip
import json
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.test import override_settings
from django.urls import reverse
from django.utils import timezone
from django_celery_results.models import TaskResult

from retention_admin.admin_views import describe_cron, next_run
from retention_admin.executor import Options, Selection, run_cleanup
from retention_admin.models import ArchiveBatch, CleanupRun, RetentionHold, RetentionPolicy, RetentionTier
from retention_admin.previews import humanize_duration, preview_policy

from .celery_conf import set_celery_setting

pytestmark = pytest.mark.django_db
DAY = timedelta(days=1)


def daily() -> RetentionTier:
    return RetentionTier.objects.get(slug="daily")


def make_policy(**fields: object) -> RetentionPolicy:
    fields.setdefault("tier", daily())
    fields.setdefault("priority", 5)
    return RetentionPolicy.objects.create(**fields)


# -- words ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "expression, words",
    [
        ("0 2 * * *", "At 02:00, every day"),
        ("0 3 * * 0", "At 03:00, only on Sunday"),
        ("0 4 1 * *", "At 04:00, on day 1 of the month"),
        ("0 * * * *", "Every hour"),
    ],
)
def test_cron_in_words(expression, words):
    assert describe_cron(expression) == words


@pytest.mark.parametrize(
    "value, words",
    [
        (None, "forever"),
        (timedelta(minutes=30), "30 minutes"),
        (timedelta(hours=6), "6 hours"),
        (timedelta(days=7), "1 week"),
        (timedelta(days=10), "10 days"),
        (timedelta(days=1, hours=12), "1 day 12 hours"),
    ],
)
def test_keep_for_in_words(value, words):
    assert humanize_duration(value) == words


# -- policies ---------------------------------------------------------------------


def test_policy_changelist_shows_schedule_matchers_and_keep_for(admin_client):
    response = admin_client.get(reverse("admin:retention_admin_retentionpolicy_changelist"))
    html = response.content.decode()
    assert response.status_code == 200
    assert "At 02:00, every day" in html  # failures-7d is on the daily tier
    assert "any task; status FAILURE" in html
    assert "1 week" in html and "30 minutes" in html and "forever" in html
    assert 'name="form-0-priority"' in html  # reordering in place


def test_policy_preview_counts_due_oldest_examples_and_shadowing(admin_client, make_result):
    reports = make_policy(name="reports", priority=45, task_name_pattern="reports.*", keep_for=2 * DAY)
    make_policy(name="everything-late", priority=500, keep_for=30 * DAY)
    old = [make_result(task_name="reports.daily", age=(3 + i) * DAY) for i in range(3)]
    make_result(task_name="reports.daily", age=DAY)  # governed, not due
    make_result(task_name="reports.daily", status="FAILURE", age=10 * DAY)  # failures-7d wins
    make_result(task_name="other.task", age=10 * DAY)
    RetentionHold.objects.create(task_id=old[0].task_id, reason="incident")

    preview = preview_policy(reports)
    assert str(preview.governs) == "4"  # 3 old + 1 recent; the failure is failures-7d's
    assert str(preview.due) == "2"  # one of the three old ones is held
    assert preview.oldest == old[2].date_done
    assert preview.examples == [old[2].task_id, old[1].task_id]
    assert [(o.policy, str(o.results)) for o in preview.shadowed_by] == [("failures-7d", "1")]
    assert [(o.policy, str(o.results)) for o in preview.shadows] == [("everything-late", "4")]
    assert preview.bytes > 0 and not preview.bytes_estimated

    response = admin_client.get(reverse("admin:retention_admin_retentionpolicy_preview", args=[reports.pk]))
    html = response.content.decode()
    assert response.status_code == 200
    assert old[2].task_id in html and "failures-7d" in html and "everything-late" in html


def test_preview_of_a_disabled_policy_says_so(admin_client, make_result):
    policy = RetentionPolicy.objects.get(name="audit-30d")
    make_result(task_name="audit.login", age=40 * DAY)
    preview = preview_policy(policy)
    assert str(preview.due) == "1"
    assert any("disabled" in note for note in preview.notes)


def test_preview_of_a_missing_policy_is_404(admin_client):
    response = admin_client.get(reverse("admin:retention_admin_retentionpolicy_preview", args=[99999]))
    assert response.status_code == 404


def policy_post(**overrides: object) -> dict[str, object]:
    data: dict[str, object] = {
        "name": "bulk", "enabled": "on", "priority": "1", "tier": str(daily().pk),
        "task_name_pattern": "bulk.*", "statuses": [], "min_result_bytes": "",
        "keep_for": "1 00:00:00", "description": "",
    }
    data.update(overrides)
    return data


@override_settings(RETENTION_ADMIN={"CONFIRM_DUE_OVER": 3})
def test_saving_a_policy_that_makes_many_results_due_asks_first(admin_client, make_result):
    for _ in range(5):
        make_result(task_name="bulk.job", age=DAY / 2)  # not yet due under result_expires (1 day)
    url = reverse("admin:retention_admin_retentionpolicy_add")
    response = admin_client.post(url, policy_post(keep_for="01:00:00"))
    assert response.status_code == 200
    html = response.content.decode()
    assert "makes more than 3 results due at once" in html
    assert 'type="checkbox" name="confirm_due"' in html
    assert not RetentionPolicy.objects.filter(name="bulk").exists()
    response = admin_client.post(url, policy_post(keep_for="01:00:00", confirm_due="on"))
    assert response.status_code == 302
    assert RetentionPolicy.objects.filter(name="bulk").exists()


@override_settings(RETENTION_ADMIN={"CONFIRM_DUE_OVER": 3})
def test_results_already_due_need_no_confirmation(admin_client, make_result):
    # Older than result_expires (1 day): due under the remainder already, so this
    # policy takes them over without making anything newly due.
    for _ in range(5):
        make_result(task_name="bulk.job", age=3 * DAY)
    response = admin_client.post(reverse("admin:retention_admin_retentionpolicy_add"), policy_post())
    assert response.status_code == 302


@override_settings(RETENTION_ADMIN={"CONFIRM_DUE_OVER": 3})
def test_editing_keep_for_down_asks_first(admin_client, make_result):
    policy = make_policy(name="bulk", task_name_pattern="bulk.*", keep_for=30 * DAY)
    for _ in range(5):
        make_result(task_name="bulk.job", age=5 * DAY)
    url = reverse("admin:retention_admin_retentionpolicy_change", args=[policy.pk])
    response = admin_client.post(url, policy_post(keep_for="2 00:00:00"))
    assert response.status_code == 200 and "results due at once" in response.content.decode()
    policy.refresh_from_db()
    assert policy.keep_for == 30 * DAY
    assert admin_client.post(url, policy_post(keep_for="29 00:00:00")).status_code == 302


# -- tiers ------------------------------------------------------------------------


def test_tier_page_shows_schedule_next_run_link_and_policies(admin_client):
    tier = daily()
    response = admin_client.get(reverse("admin:retention_admin_retentiontier_change", args=[tier.pk]))
    html = response.content.decode()
    assert "At 02:00, every day" in html
    assert reverse("admin:django_celery_beat_periodictask_change", args=[tier.periodic_task.pk]) in html
    assert "failures-7d" in html  # inline
    assert 'id="tier-dry-run"' in html and 'id="tier-run-now"' in html
    when = next_run(tier.periodic_task)
    assert when is not None and when > timezone.now() and when.hour == 2 and when.minute == 0
    changelist = admin_client.get(reverse("admin:retention_admin_retentiontier_changelist")).content.decode()
    assert "At 03:00, only on Sunday" in changelist


def test_next_run_of_a_disabled_task_is_none():
    task = daily().periodic_task
    task.enabled = False
    assert next_run(task) is None


def test_dry_run_shows_the_report_and_changes_nothing(admin_client, make_result):
    make_result(status="FAILURE", age=10 * DAY)
    response = admin_client.post(reverse("admin:retention_admin_retentiontier_dry_run", args=[daily().pk]))
    html = response.content.decode()
    assert response.status_code == 200
    assert "Nothing was changed" in html and "failures-7d" in html
    run = CleanupRun.objects.get()
    assert run.dry_run and run.trigger == "admin" and run.started_by == admin_client.user
    assert run.report["policies"][0]["matched"] == 1
    assert TaskResult.objects.count() == 1


def test_run_now_without_a_worker_runs_here_and_says_so(admin_client, make_result):
    make_result(status="FAILURE", age=10 * DAY)
    response = admin_client.post(
        reverse("admin:retention_admin_retentiontier_run_now", args=[daily().pk]), follow=True
    )
    html = response.content.decode()
    assert "synchronously" in html and "memory://" in html
    run = CleanupRun.objects.get()
    assert not run.dry_run and run.deleted == 1 and run.started_by == admin_client.user
    assert TaskResult.objects.count() == 0


# Run now with a real worker: tests/test_admin_worker.py (PostgreSQL + RabbitMQ).


def test_worker_ping_on_a_real_broker_without_workers(rabbitmq_server):
    from celery import Celery

    from retention_admin.admin_views import worker_available
    from tests.services import AMQP_URL

    # An app of its own: the project's app keeps its memory:// broker and pools.
    app = Celery("ping-test", broker=AMQP_URL, set_as_current=False)
    try:
        assert worker_available(app) == (False, "no Celery worker answered a ping")
    finally:
        app.close()


def test_eager_tasks_mean_no_worker(settings):
    from celery import Celery

    from retention_admin.admin_views import worker_available

    app = Celery("eager-test", broker="memory://", set_as_current=False)
    set_celery_setting("task_always_eager", True, app)
    assert worker_available(app) == (False, "tasks run eagerly (task_always_eager)")


# -- explain ----------------------------------------------------------------------


def test_explain_page_gives_verdicts_due_time_and_holds(admin_client, make_result):
    row = make_result(task_name="tasks.work", status="FAILURE", age=2 * DAY)
    RetentionHold.objects.create(task_id=row.task_id, reason="incident 42")
    response = admin_client.get(reverse("admin:retention_admin_explain"), {"task_id": row.task_id})
    html = response.content.decode()
    assert response.status_code == 200
    assert "governed by policy &#x27;failures-7d&#x27;" in html
    assert "status FAILURE is one of FAILURE" in html
    assert "incident 42" in html


def test_explain_unknown_and_blank_task_ids(admin_client):
    url = reverse("admin:retention_admin_explain")
    html = admin_client.get(url, {"task_id": "nope"}).content.decode()
    assert "nope is not in the result table and no archive batch holds it" in html
    response = admin_client.get(url, {"task_id": "   "})
    assert response.status_code == 200 and "Enter a task id" in response.content.decode()


def test_taskresult_admin_links_to_explain(admin_client, make_result):
    row = make_result()
    changelist = admin_client.get(reverse("admin:django_celery_results_taskresult_changelist")).content.decode()
    assert f"?task_id={row.task_id}" in changelist
    change = admin_client.get(reverse("admin:django_celery_results_taskresult_change", args=[row.pk]))
    assert 'id="explain-retention"' in change.content.decode()


# -- holds ------------------------------------------------------------------------


def test_place_hold_from_the_taskresult_changelist(admin_client, make_result):
    rows = [make_result() for _ in range(3)]
    url = reverse("admin:django_celery_results_taskresult_changelist")
    selected = [str(rows[0].pk), str(rows[1].pk)]
    form = admin_client.post(url, {"action": "place_hold", "_selected_action": selected})
    assert form.status_code == 200 and "Hold 2 results" in form.content.decode()
    bad = admin_client.post(url, {"action": "place_hold", "_selected_action": selected, "apply": "1", "reason": " "})
    assert "Say why these results are held" in bad.content.decode()
    assert not RetentionHold.objects.exists()
    past = admin_client.post(url, {"action": "place_hold", "_selected_action": selected, "apply": "1",
                                   "reason": "x", "until_0": "2000-01-01", "until_1": "00:00:00"})
    assert "must be in the future" in past.content.decode()
    done = admin_client.post(
        url, {"action": "place_hold", "_selected_action": selected, "apply": "1", "reason": "legal"}, follow=True
    )
    assert "Placed 2 hold(s) until lifted" in done.content.decode()
    assert sorted(RetentionHold.objects.values_list("task_id", flat=True)) == sorted(r.task_id for r in rows[:2])
    assert {h.created_by for h in RetentionHold.objects.all()} == {admin_client.user}


def test_lift_holds_ends_them_and_keeps_the_record(admin_client):
    hold = RetentionHold.objects.create(task_id="lifted-hold-task", reason="x")
    RetentionHold.objects.create(task_id="still-held-task", reason="y")
    response = admin_client.post(
        reverse("admin:retention_admin_retentionhold_changelist"),
        {"action": "lift_holds", "_selected_action": [str(hold.pk)]}, follow=True,
    )
    assert "Lifted 1 hold(s)" in response.content.decode()
    hold.refresh_from_db()
    assert not hold.is_active()
    active = admin_client.get(reverse("admin:retention_admin_retentionhold_changelist"), {"state": "active"})
    # (Task ids long enough not to turn up by chance, e.g. inside the CSRF token.)
    assert "lifted-hold-task" not in active.content.decode()
    assert "still-held-task" in active.content.decode()


def test_taskresult_admin_keeps_its_features(admin_client, make_result):
    from django.contrib import admin as django_admin
    from django_celery_results.admin import TaskResultAdmin as Base

    model_admin = django_admin.site._registry[TaskResult]
    assert isinstance(model_admin, Base)
    assert model_admin.search_fields == Base.search_fields
    assert model_admin.fieldsets == Base.fieldsets
    assert set(Base.list_display) <= set(model_admin.list_display)
    make_result(task_id="find-me", task_name="reports.x", status="FAILURE")
    make_result(task_id="other", task_name="mail.y")
    url = reverse("admin:django_celery_results_taskresult_changelist")
    for params in ({"q": "find-me"}, {"status__exact": "FAILURE"}, {"task_name": "reports.x"}):
        html = admin_client.get(url, params).content.decode()
        assert "find-me" in html and ">other<" not in html, params


# -- runs -------------------------------------------------------------------------


def test_run_detail_shows_policy_table_and_full_error(admin_client, make_result):
    make_result(status="FAILURE", age=10 * DAY)
    run = run_cleanup(Selection(tiers=["daily"]), Options())
    run.error = "Traceback (most recent call last):\n  boom\nValueError: line three"
    run.save()
    html = admin_client.get(reverse("admin:retention_admin_cleanuprun_change", args=[run.pk])).content.decode()
    assert "failures-7d" in html and "ValueError: line three" in html and "boom" in html
    assert 'name="_save"' not in html  # read-only
    changelist = reverse("admin:retention_admin_cleanuprun_changelist")
    for params in ({"status__exact": "succeeded"}, {"trigger__exact": "command"}, {"tier__id__exact": str(daily().pk)}):
        assert admin_client.get(changelist, params).status_code == 200


# -- archive batches --------------------------------------------------------------


@pytest.fixture
def batch(make_result, archive_dir) -> ArchiveBatch:
    RetentionPolicy.objects.create(
        name="audit", tier=daily(), priority=1, archive=True, task_name_pattern="audit.*", keep_for=DAY
    )
    for i in range(3):
        make_result(task_id=f"a{i}", task_name="audit.x", age=(5 + i) * DAY, result=f'"r{i}"')
    run_cleanup(Selection(policies=["audit"]), Options())
    return ArchiveBatch.objects.get()


def test_archive_changelist_and_detail(admin_client, batch):
    html = admin_client.get(reverse("admin:retention_admin_archivebatch_changelist")).content.decode()
    assert batch.sha256[:12] in html and "audit" in html and "complete" in html
    detail = admin_client.get(reverse("admin:retention_admin_archivebatch_change", args=[batch.pk])).content.decode()
    for button in ("archive-verify", "archive-preview", "archive-download", "archive-restore"):
        assert f'id="{button}"' in detail
    assert admin_client.get(reverse("admin:retention_admin_archivebatch_add")).status_code == 403


def test_archive_verify_records_it_and_reports_corruption(admin_client, batch, archive_dir):
    url = reverse("admin:retention_admin_archivebatch_verify", args=[batch.pk])
    html = admin_client.post(url, follow=True).content.decode()
    assert "verifies: 3 records" in html
    batch.refresh_from_db()
    assert batch.verified_at is not None
    (archive_dir / batch.name).write_bytes(b"garbage")
    html = admin_client.post(url, follow=True).content.decode()
    assert "does not verify" in html
    batch.refresh_from_db()
    assert batch.status == "corrupt"


def test_archive_verify_action_on_the_changelist(admin_client, batch):
    response = admin_client.post(
        reverse("admin:retention_admin_archivebatch_changelist"),
        {"action": "verify_batches", "_selected_action": [str(batch.pk)]}, follow=True,
    )
    assert "verifies: 3 records" in response.content.decode()


def test_archive_download_streams_the_object(admin_client, batch, archive_dir):
    response = admin_client.get(reverse("admin:retention_admin_archivebatch_download", args=[batch.pk]))
    assert response.status_code == 200 and response.streaming
    data = b"".join(response.streaming_content)
    assert data == (archive_dir / batch.name).read_bytes()
    assert [json.loads(line)["task_id"] for line in gzip.decompress(data).splitlines()] == ["a2", "a1", "a0"]
    assert 'attachment; filename="' in response["Content-Disposition"]


def test_archive_download_of_a_missing_object_is_a_message(admin_client, batch, archive_dir):
    (archive_dir / batch.name).unlink()
    response = admin_client.get(reverse("admin:retention_admin_archivebatch_download", args=[batch.pk]), follow=True)
    assert response.status_code == 200 and "Cannot download archive batch" in response.content.decode()


def test_archive_preview_shows_first_records(admin_client, batch):
    html = admin_client.get(reverse("admin:retention_admin_archivebatch_preview", args=[batch.pk])).content.decode()
    assert "a0" in html and "a2" in html and "audit.x" in html


def test_archive_restore_confirms_then_restores(admin_client, batch):
    url = reverse("admin:retention_admin_archivebatch_restore", args=[batch.pk])
    page = admin_client.get(url).content.decode()
    assert 'id="restore-confirm"' in page and not TaskResult.objects.exists()
    dry = admin_client.post(url, {"dry_run": "1"}).content.decode()
    assert "A restore now would put back 3 results" in dry and not TaskResult.objects.exists()
    done = admin_client.post(url, {"confirm": "1"}).content.decode()
    assert "Restored 3 results" in done
    assert sorted(TaskResult.objects.values_list("task_id", flat=True)) == ["a0", "a1", "a2"]
    again = admin_client.post(url, {"confirm": "1"}).content.decode()
    assert "Restored 0 results" in again


def test_archive_restore_of_a_corrupt_batch_says_why(admin_client, batch, archive_dir):
    (archive_dir / batch.name).write_bytes(b"garbage")
    html = admin_client.post(reverse("admin:retention_admin_archivebatch_restore", args=[batch.pk]), {"confirm": "1"}).content.decode()
    assert "was not restored" in html and not TaskResult.objects.exists()


@override_settings(RETENTION_ADMIN={"CONFIRM_DUE_OVER": 3})
def test_changelist_edits_that_make_many_results_due_are_refused(admin_client, make_result):
    policy = make_policy(name="bulk", task_name_pattern="bulk.*", keep_for=DAY / 24, enabled=False)
    for _ in range(5):
        make_result(task_name="bulk.job", age=DAY / 2)
    policies = list(RetentionPolicy.objects.order_by("priority", "name"))
    data = {"form-TOTAL_FORMS": str(len(policies)), "form-INITIAL_FORMS": str(len(policies)), "_save": "Save"}
    for i, p in enumerate(policies):
        data[f"form-{i}-id"] = str(p.pk)
        data[f"form-{i}-priority"] = str(p.priority)
        if p.enabled or p.pk == policy.pk:
            data[f"form-{i}-enabled"] = "on"  # enabling "bulk" makes 5 due
    response = admin_client.post(reverse("admin:retention_admin_retentionpolicy_changelist"), data)
    assert response.status_code == 200
    assert "Make this change on the policy&#x27;s own page" in response.content.decode()
    policy.refresh_from_db()
    assert not policy.enabled


# -- large tables -----------------------------------------------------------------


def test_preview_stops_at_its_time_budget(make_result):
    make_result(status="FAILURE", age=10 * DAY)
    preview = preview_policy(RetentionPolicy.objects.get(name="failures-7d"), seconds=0)
    assert preview.governs.timed_out and str(preview.governs) == "not counted (over the time budget)"
    assert any("time budget" in note for note in preview.notes)


def test_a_statement_past_the_deadline_is_cancelled_and_the_connection_recovers(vendor):
    import time

    from django.db import connection

    from retention_admin.previews import Deadline

    sleeper = {
        "postgresql": "SELECT pg_sleep(3)",
        "mysql": "SELECT SLEEP(3)",
        # A long computation: SQLite's progress handler interrupts it.
        "sqlite": "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 100000000) SELECT SUM(i) FROM n",
    }[vendor]

    def slow() -> object:
        with connection.cursor() as cursor:
            cursor.execute(sleeper)
            return cursor.fetchone()

    started = time.monotonic()
    result, timed_out = Deadline("default", 0.3).run(slow, fallback="skipped")
    assert (result, timed_out) == ("skipped", True)
    assert time.monotonic() - started < 2.5
    assert RetentionPolicy.objects.filter(name="failures-7d").exists()  # the connection still works
    with connection.cursor() as cursor:
        if vendor == "postgresql":
            cursor.execute("SHOW statement_timeout")
            assert cursor.fetchone()[0] == "0"
        elif vendor == "mysql":
            cursor.execute("SELECT @@SESSION.max_statement_time")
            assert float(cursor.fetchone()[0]) == 0
    if vendor == "sqlite":  # the handler is gone: a long statement runs to its end again
        with connection.cursor() as cursor:
            cursor.execute("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n LIMIT 300000) SELECT SUM(i) FROM n")
            assert cursor.fetchone()[0] == 300000 * 300001 // 2


def test_capped_counts_and_estimates(make_result):
    from retention_admin.previews import capped_count

    for _ in range(5):
        make_result()
    assert str(capped_count(TaskResult.objects.all(), cap=10)) == "5"
    capped = capped_count(TaskResult.objects.all(), cap=3)
    assert capped.more and str(capped).startswith("more than 3")


def test_taskresult_changelist_has_no_distinct_scans_or_full_counts(admin_client, make_result):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    for _ in range(3):
        make_result()
    url = reverse("admin:django_celery_results_taskresult_changelist")
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(url)
    assert response.status_code == 200
    sql = [q["sql"].upper() for q in queries.captured_queries if "TASKRESULT" in q["sql"].upper()]
    assert not [s for s in sql if "DISTINCT" in s]
    counts = [s for s in sql if "COUNT(" in s]
    assert counts and all("LIMIT" in s for s in counts), counts  # capped, never the whole table
    assert "3 task results" in response.content.decode()


def test_paginator_uses_the_estimate_past_the_cap(make_result, vendor, monkeypatch):
    from retention_admin import largetables

    for _ in range(4):
        make_result()
    monkeypatch.setattr(largetables, "COUNT_CAP", 2)
    paginator = largetables.EstimatedCountPaginator(TaskResult.objects.order_by("-date_done"), 1)
    estimate = largetables.table_row_estimate(TaskResult, "default")
    assert paginator.count == (estimate if estimate is not None and estimate > 2 else 2)
    filtered = largetables.EstimatedCountPaginator(TaskResult.objects.filter(status="SUCCESS"), 1)
    assert filtered.count == 2 and filtered.estimated


def test_search_by_exact_task_id_uses_the_index(admin_client, make_result):
    make_result(task_id="abc-1")
    make_result(task_id="abc-12")
    url = reverse("admin:django_celery_results_taskresult_changelist")
    html = admin_client.get(url, {"q": "abc-1"}).content.decode()
    assert "abc-1<" in html and "abc-12" not in html
    both = admin_client.get(url, {"q": "abc"}).content.decode()
    assert "abc-12" in both  # substring search as before


def tier_post(tier: RetentionTier, **policy_changes: dict[str, str]) -> dict[str, object]:
    """The tier change form as the browser posts it, with its policies inline."""
    policies = list(tier.policies.order_by("priority", "name"))
    data: dict[str, object] = {
        "name": tier.name, "slug": tier.slug, "periodic_task": str(tier.periodic_task_id or ""),
        "description": tier.description,
        "policies-TOTAL_FORMS": str(len(policies)), "policies-INITIAL_FORMS": str(len(policies)),
        "policies-MIN_NUM_FORMS": "0", "policies-MAX_NUM_FORMS": "1000", "_save": "Save",
    }
    for i, p in enumerate(policies):
        row = {
            "id": str(p.pk), "tier": str(tier.pk), "name": p.name, "priority": str(p.priority),
            "task_name_pattern": p.task_name_pattern,
            "keep_for": "" if p.keep_for is None else f"{p.keep_for.days} {p.keep_for.seconds // 3600:02d}:{p.keep_for.seconds // 60 % 60:02d}:00",
        }
        if p.enabled:
            row["enabled"] = "on"
        if p.archive:
            row["archive"] = "on"
        row.update(policy_changes.get(p.name, {}))
        data.update({f"policies-{i}-{k}": v for k, v in row.items() if v is not None})
    return data


@override_settings(RETENTION_ADMIN={"CONFIRM_DUE_OVER": 3})
def test_tier_inline_edits_that_make_many_results_due_are_refused(admin_client, make_result):
    tier = daily()
    for _ in range(5):
        make_result(status="FAILURE", age=3 * DAY)
    url = reverse("admin:retention_admin_retentiontier_change", args=[tier.pk])
    assert admin_client.post(url, tier_post(tier)).status_code == 302  # unchanged: no question
    response = admin_client.post(url, tier_post(tier, **{"failures-7d": {"keep_for": "2 00:00:00"}}))
    assert response.status_code == 200
    assert "Make this change on the policy&#x27;s own page" in response.content.decode()
    assert RetentionPolicy.objects.get(name="failures-7d").keep_for == 7 * DAY
    assert admin_client.post(url, tier_post(tier, **{"failures-7d": {"keep_for": "6 00:00:00"}})).status_code == 302
