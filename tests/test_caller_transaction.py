"""Every entry point inside a caller's transaction (ATOMIC_REQUESTS, a test, an
atomic block): a database error is recorded as a failed run with the real error,
never hidden by the transaction it broke."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.urls import reverse
from django_celery_results.models import TaskResult

from retention_admin.executor import CleanupFailed, Options, Selection, run_cleanup
from retention_admin.models import CleanupLease, CleanupRun, RetentionTier

DAY = timedelta(days=1)
pytestmark = pytest.mark.django_db


@pytest.fixture
def failing_delete() -> Iterator[None]:
    """A trigger that makes the database refuse to delete a result: a real error."""
    if connection.vendor not in ("sqlite", "postgresql"):
        pytest.skip("a trigger is DDL, which MariaDB commits implicitly (it would leave the test's transaction)")
    table = TaskResult._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            cursor.execute(
                f"CREATE TRIGGER refuse BEFORE DELETE ON {table} BEGIN SELECT RAISE(ABORT, 'refused by trigger'); END"
            )
        else:
            cursor.execute(
                "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN "
                "RAISE EXCEPTION 'refused by trigger'; END $$ LANGUAGE plpgsql"
            )
            cursor.execute(f"CREATE TRIGGER refuse BEFORE DELETE ON {table} FOR EACH ROW EXECUTE FUNCTION refuse()")
    yield


@pytest.fixture
def atomic_requests() -> Iterator[None]:
    connection.settings_dict["ATOMIC_REQUESTS"] = True
    yield
    connection.settings_dict["ATOMIC_REQUESTS"] = False


def test_a_failed_batch_inside_a_transaction_is_recorded_with_its_error(make_result, failing_delete):
    make_result(task_id="old", age=30 * DAY)
    with transaction.atomic():
        with pytest.raises(CleanupFailed) as failed:
            run_cleanup(Selection(), Options())
        run = CleanupRun.objects.get(pk=failed.value.run.pk)
        assert run.status == CleanupRun.Status.FAILED
        assert "refused by trigger" in run.error
        assert "TransactionManagementError" not in run.error
        # The lease was released and the result is still there.
        assert not CleanupLease.objects.exclude(holder="").exists()
        assert TaskResult.objects.filter(task_id="old").exists()


def test_admin_run_buttons_with_atomic_requests_record_the_failure(
    admin_client, make_result, failing_delete, atomic_requests
):
    make_result(task_id="old", status="FAILURE", age=30 * DAY)  # failures-7d, a daily policy
    daily = RetentionTier.objects.get(slug="daily")
    with connection.cursor() as cursor:  # the dry run's reads fail too: its holds are gone
        cursor.execute("ALTER TABLE retention_admin_retentionhold RENAME TO retention_admin_retentionhold_away")

    response = admin_client.post(reverse("admin:retention_admin_retentiontier_dry_run", args=[daily.pk]))
    assert response.status_code == 200
    dry = CleanupRun.objects.get(dry_run=True)
    assert dry.status == CleanupRun.Status.FAILED and "retentionhold" in dry.error
    assert f"Run #{dry.pk} failed" in response.content.decode()

    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE retention_admin_retentionhold_away RENAME TO retention_admin_retentionhold")
    response = admin_client.post(
        reverse("admin:retention_admin_retentiontier_run_now", args=[daily.pk]), follow=True
    )
    assert response.status_code == 200
    real = CleanupRun.objects.get(dry_run=False)
    assert real.status == CleanupRun.Status.FAILED
    assert "refused by trigger" in real.error
    assert TaskResult.objects.filter(task_id="old").exists()
