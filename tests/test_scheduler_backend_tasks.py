from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import override_settings
from django_celery_beat.models import CrontabSchedule, PeriodicTask
from django_celery_beat.schedulers import DatabaseScheduler
from django_celery_results.models import TaskResult

from retention_admin.backends import RetentionDatabaseBackend
from retention_admin.models import CleanupRun, RetentionPolicy, RetentionTier
from retention_admin.schedulers import RetentionScheduler
from retention_admin.tasks import run_policy, run_tier, take_snapshot
from testproject.celery import app

from .celery_conf import celery_settings
from .conftest import ids_left

DAY = timedelta(days=1)
pytestmark = pytest.mark.django_db


def cron_of(name: str) -> tuple[str, str]:
    task = PeriodicTask.objects.select_related("crontab").get(name=name)
    return task.crontab.minute, task.crontab.hour


def install_defaults(scheduler_class: type) -> None:
    # Beat calls close_old_connections() as it reads the schedule, which would close
    # a test connection inside its transaction: these tests use seeded_transactional_db.
    scheduler = scheduler_class(app=app, lazy=True)
    scheduler.install_default_entries({})


def edit_backend_cleanup() -> None:
    task = PeriodicTask.objects.get(name="celery.backend_cleanup")
    task.crontab = CrontabSchedule.objects.create(minute="30", hour="5")
    task.save()


def test_stock_scheduler_resets_the_operators_edit(seeded_transactional_db):
    # The behaviour we fix: stock django-celery-beat's default entry install.
    edit_backend_cleanup()
    install_defaults(DatabaseScheduler)
    assert cron_of("celery.backend_cleanup") == ("0", "4")


def test_retention_scheduler_keeps_the_operators_edit(seeded_transactional_db):
    edit_backend_cleanup()
    install_defaults(RetentionScheduler)
    assert cron_of("celery.backend_cleanup") == ("30", "5")


def test_retention_scheduler_creates_the_entry_when_missing(seeded_transactional_db):
    PeriodicTask.objects.filter(name="celery.backend_cleanup").delete()
    install_defaults(RetentionScheduler)
    assert cron_of("celery.backend_cleanup") == ("0", "4")


def test_retention_scheduler_does_not_create_it_without_result_expires(seeded_transactional_db):
    PeriodicTask.objects.filter(name="celery.backend_cleanup").delete()
    with celery_settings(result_expires=None):
        install_defaults(RetentionScheduler)
    assert not PeriodicTask.objects.filter(name="celery.backend_cleanup").exists()


def test_backend_is_the_configured_one():
    assert isinstance(app.backend, RetentionDatabaseBackend)


def test_backend_cleanup_task_deletes_only_the_unmatched_remainder(make_result):
    make_result(task_id="fail-3d", status="FAILURE", age=3 * DAY)  # governed by failures-7d
    make_result(task_id="fail-8d", status="FAILURE", age=8 * DAY)  # due, but the tier's job
    make_result(task_id="ok-3d", age=3 * DAY)

    app.tasks["celery.backend_cleanup"].apply().get()

    assert ids_left() == {"fail-3d", "fail-8d"}
    run = CleanupRun.objects.get()
    assert run.trigger == "backend_cleanup" and run.status == "succeeded"
    assert run.report["policies"] == [] and run.report["unmatched"]["deleted"] == 1


def test_run_tier_in_process_when_fan_out_is_off(make_result):
    make_result(task_id="fail-8d", status="FAILURE", age=8 * DAY)
    make_result(task_id="ok-3d", age=3 * DAY)
    with override_settings(RETENTION_ADMIN={"FAN_OUT": False}):
        report = run_tier.apply(args=["daily"]).get()
    assert ids_left() == {"ok-3d"}  # a tier run leaves the remainder to backend_cleanup
    run = CleanupRun.objects.get(pk=report["run"])
    assert run.tier.slug == "daily" and run.trigger == "task"


def drain(queue: str) -> list[tuple[str, tuple, dict]]:
    """Messages waiting in a queue of the test project's broker (memory:// here)."""
    out = []
    with app.connection_for_read() as conn:
        simple = conn.SimpleQueue(queue)
        try:
            while True:
                message = simple.get(block=False)
                args, kwargs, _embed = message.payload
                out.append((message.headers["task"], tuple(args), kwargs))
                message.ack()
        except simple.Empty:
            pass
        finally:
            simple.close()
    return out


def test_run_tier_fans_out_one_task_per_policy(make_result):
    if not app.conf.broker_url.startswith("memory://"):
        pytest.skip("reads the in-memory broker's queue")
    RetentionPolicy.objects.filter(name="api-6h").update(enabled=True)
    drain(app.conf.task_default_queue)

    report = run_tier.apply(args=["daily"]).get()

    parent = CleanupRun.objects.get(pk=report["run"])
    assert parent.status == "dispatched" and parent.tier.slug == "daily"
    sent = drain(app.conf.task_default_queue)
    assert [(task, args) for task, args, _kw in sent] == [
        ("retention_admin.tasks.run_policy", ("failures-7d",)),
        ("retention_admin.tasks.run_policy", ("api-6h",)),
    ]
    assert all(kw == {"dry_run": False, "parent": parent.pk} for _t, _a, kw in sent)


def test_run_policy_records_its_run_under_the_parent(make_result):
    make_result(task_id="fail-8d", status="FAILURE", age=8 * DAY)
    parent = CleanupRun.objects.create(trigger="task", status="dispatched")
    report = run_policy.apply(args=["failures-7d"], kwargs={"parent": parent.pk}).get()
    child = CleanupRun.objects.get(pk=report["run"])
    assert child.parent == parent and child.policy.name == "failures-7d"
    assert ids_left() == set()


def test_run_policy_on_a_disabled_policy_fails_clearly():
    result = run_policy.apply(args=["api-6h"])
    assert result.failed()
    assert "is disabled" in str(result.result)


def test_take_snapshot_task_records_sizes(make_result):
    make_result(status="SUCCESS")
    make_result(status="FAILURE", task_name="other")
    pk = take_snapshot.apply().get()
    from retention_admin.models import StorageSnapshot

    snap = StorageSnapshot.objects.get(pk=pk)
    assert snap.task_rows == 2
    assert snap.rows_by_status == {"SUCCESS": 1, "FAILURE": 1}
    assert {row["task_name"] for row in snap.rows_by_task} == {"tasks.work", "other"}
    assert snap.table_bytes and snap.table_bytes > 0


def test_tiers_link_their_periodic_task():
    for tier in RetentionTier.objects.all():
        assert tier.periodic_task.task == "retention_admin.tasks.run_tier"
    assert TaskResult.objects.count() == 0

