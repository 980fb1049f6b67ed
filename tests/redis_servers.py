"""Shared by the tests that start Redis servers of their own (TLS, Sentinel)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from celery import current_app, states
from celery.app.task import Context
from django.test import override_settings

from retention_admin.models import RetentionPolicy, RetentionTier
from testproject.celery import app

from .celery_conf import CeleryConf


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def reset_backend() -> None:
    app._backend_cache = None
    app._local.__dict__.pop("backend", None)


@contextmanager
def result_backend(
    url: str, transport_options: dict[str, Any], tmp_path: Path, celery_conf: CeleryConf
) -> Iterator[Any]:
    """The project's Celery app with ``url`` as its result backend (restored afterwards).

    Settings go through the test's ``celery_conf`` fixture, so a test that changes
    more of them through it has them put back in the right order.
    """
    previous = current_app._get_current_object()
    app.set_current()
    celery_conf.result_backend = url
    celery_conf.result_backend_transport_options = transport_options
    reset_backend()
    archive_dir = tmp_path / "archive"
    archive_dir.mkdir()
    try:
        with override_settings(RETENTION_ADMIN={"REDIS_POLICY_REFRESH_SECONDS": 0, "ARCHIVE_DIR": str(archive_dir)}):
            yield app
    finally:
        celery_conf.restore()
        reset_backend()
        previous.set_current()


def store(task_id: str, task_name: str) -> None:
    request = Context(task=task_name, args=[], kwargs={}, hostname="worker@test", delivery_info={})
    app.backend.store_result(task_id, "ok", states.SUCCESS, request=request)


def meta_key(task_id: str) -> bytes:
    return f"celery-task-meta-{task_id}".encode()


def api_policy(name: str) -> RetentionPolicy:
    """Results of ``api.*`` tasks kept six hours."""
    return RetentionPolicy.objects.create(
        name=name, priority=1, tier=RetentionTier.objects.get(slug="daily"),
        task_name_pattern="api.*", keep_for=timedelta(hours=6),
    )
