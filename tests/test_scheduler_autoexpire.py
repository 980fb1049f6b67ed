"""RetentionScheduler keeps ``celery.backend_cleanup`` for our Redis backends.

Redis expires keys itself (``supports_autoexpire``), so stock Celery beat never
schedules ``celery.backend_cleanup`` for it; RetentionRedisBackend relies on that
task (its ``cleanup()`` gives the keys no policy governs their ``result_expires``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django_celery_beat.models import CrontabSchedule, PeriodicTask

from retention_admin.backends import RetentionRedisBackend, RetentionSentinelBackend
from retention_admin.schedulers import RetentionScheduler
from testproject.celery import app

REDIS_BACKEND = "retention_admin.backends.RetentionRedisBackend+redis://127.0.0.1:6379/7"
# Constructing the backend does not connect: no sentinel needs to answer here.
SENTINEL_BACKEND = "retention_admin.backends.RetentionSentinelBackend+sentinel://127.0.0.1:26379/7"
STOCK_REDIS = "redis://127.0.0.1:6379/7"


def reset_backend() -> None:
    app._backend_cache = None
    app._local.__dict__.pop("backend", None)


@pytest.fixture
def result_backend(redis_server: None, celery_conf: Any) -> Iterator[Any]:
    """Sets the test project's app's ``result_backend``; the configured one comes back after."""

    def use(url: str) -> Any:
        celery_conf.result_backend = url
        reset_backend()
        return app.backend

    yield use
    celery_conf.restore()
    reset_backend()


def install_defaults() -> None:
    # As tests/test_scheduler_backend_tasks.py: beat's close_old_connections() would
    # close a test connection inside its transaction, so these tests are transactional.
    RetentionScheduler(app=app, lazy=True).install_default_entries({})


def backend_cleanup() -> PeriodicTask:
    return PeriodicTask.objects.select_related("crontab").get(name="celery.backend_cleanup")


@pytest.mark.parametrize(
    ("url", "backend_class"),
    [(REDIS_BACKEND, RetentionRedisBackend), (SENTINEL_BACKEND, RetentionSentinelBackend)],
)
def test_created_when_absent_for_our_redis_backends(
    seeded_transactional_db, result_backend, url, backend_class
):
    backend = result_backend(url)
    assert isinstance(backend, backend_class) and backend.supports_autoexpire
    PeriodicTask.objects.filter(name="celery.backend_cleanup").delete()

    install_defaults()

    task = backend_cleanup()
    assert task.task == "celery.backend_cleanup" and task.enabled
    cron = task.crontab
    assert (cron.minute, cron.hour, cron.day_of_month, cron.month_of_year, cron.day_of_week) == (
        "0", "4", "*", "*", "*",
    )
    assert task.expire_seconds == 43200
    assert (task.args, task.kwargs) == ("[]", "{}")


def test_left_untouched_when_present(seeded_transactional_db, result_backend):
    result_backend(REDIS_BACKEND)
    task = backend_cleanup()
    task.crontab = CrontabSchedule.objects.create(minute="30", hour="5")
    task.enabled = False
    task.expire_seconds = 600
    task.save()

    install_defaults()

    task = backend_cleanup()
    assert (task.crontab.minute, task.crontab.hour) == ("30", "5")
    assert not task.enabled and task.expire_seconds == 600
    assert PeriodicTask.objects.filter(name="celery.backend_cleanup").count() == 1


def test_stock_redis_backend_gets_none_as_in_celery_beat(seeded_transactional_db, result_backend):
    # Celery's own Redis backend expires everything itself; its cleanup() does nothing.
    result_backend(STOCK_REDIS)
    PeriodicTask.objects.filter(name="celery.backend_cleanup").delete()

    install_defaults()

    assert not PeriodicTask.objects.filter(name="celery.backend_cleanup").exists()
