from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone
from django_celery_results.models import TaskResult

from .celery_conf import CeleryConf
from .services import in_ci, service_problem


def require(service: str) -> None:
    """Skip (or, in CI, fail) when a loopback server the test needs is not there."""
    problem = service_problem(service)
    if problem:
        if in_ci():
            pytest.fail(f"CI needs {service}: {problem}")
        pytest.skip(problem)


@pytest.fixture
def redis_server() -> Iterator[None]:
    require("redis")
    yield


@pytest.fixture
def rabbitmq_server() -> Iterator[None]:
    require("rabbitmq")
    yield


@pytest.fixture
def celery_conf() -> Iterator[CeleryConf]:
    """The test project's Celery configuration for one test: ``celery_conf.result_backend = url``.

    Assigning to ``app.conf`` directly has no effect on Celery 5.3-5.6 for a setting
    settings.py also sets (see tests/celery_conf.py); this works on every Celery we
    support and puts everything back after the test.
    """
    conf = CeleryConf()
    yield conf
    conf.restore()


@pytest.fixture
def vendor() -> str:
    return connection.vendor


class ResultFactory:
    """Creates TaskResult rows with a given age (date_done is auto_now, so set it after)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(
        self,
        *,
        task_name: str | None = "tasks.work",
        status: str = "SUCCESS",
        age: timedelta = timedelta(0),
        result: str | None = '"ok"',
        task_id: str | None = None,
    ) -> TaskResult:
        self.count += 1
        row = TaskResult.objects.create(
            task_id=task_id or f"task-{self.count:06d}",
            task_name=task_name,
            status=status,
            result=result,
            content_type="application/json",
            content_encoding="utf-8",
        )
        done = timezone.now() - age
        TaskResult.objects.filter(pk=row.pk).update(date_done=done, date_created=done)
        row.date_done = done
        return row


@pytest.fixture
def make_result(db: None) -> ResultFactory:
    return ResultFactory()


def ids_left() -> set[str]:
    return set(TaskResult.objects.values_list("task_id", flat=True))


@pytest.fixture
def seeded_transactional_db(transactional_db: None) -> None:
    """A transactional test's database with the seeded schedules, tiers and policies.

    Transactional tests run last and each flushes the tables afterwards, taking
    the rows the seeding migration created with them; put them back first.
    """
    import importlib

    from django.apps import apps

    importlib.import_module("retention_admin.migrations.0002_seed_schedules_and_policies").seed(apps)


@pytest.fixture
def admin_client(client: Any, django_user_model: Any) -> Any:
    """A client logged in as a superuser (``client.user``)."""
    user = django_user_model.objects.create_superuser("boss", "boss@example.com", "pw")
    client.force_login(user)
    client.user = user
    return client


@pytest.fixture
def archive_dir(tmp_path: Path) -> Iterator[Path]:
    """A fresh archive directory, set as ``RETENTION_ADMIN["ARCHIVE_DIR"]``."""
    from django.test import override_settings

    directory = tmp_path / "archive"
    directory.mkdir()
    with override_settings(RETENTION_ADMIN={"ARCHIVE_DIR": str(directory)}):
        yield directory
