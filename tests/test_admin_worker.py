"""The tier page's "Run now" with a real Celery worker: it queues run_tier, the worker runs it.

A real worker (RabbitMQ, the PostgreSQL test database) is started as in the
end-to-end test; the admin request runs in this process against a Celery app
pointed at the same broker and queue.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from celery import Celery
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django_celery_results.models import TaskResult

from retention_admin.models import CleanupRun, RetentionTier

from .celery_conf import CeleryConf
from .services import AMQP_URL
from .test_e2e_beat import Processes, celery_processes, start_worker  # noqa: F401 - the fixture

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        connection.vendor != "postgresql",
        reason=f"the worker test runs on PostgreSQL only (this run uses {connection.vendor})",
    ),
    pytest.mark.django_db(transaction=True),
]


@pytest.fixture
def broker_app(celery_processes: Processes) -> Iterator[Celery]:  # noqa: F811
    """The project's Celery configuration on the test's RabbitMQ queue, made current."""
    from celery import current_app

    previous = current_app._get_current_object()
    app = Celery("admin-worker-test", set_as_current=True)
    app.config_from_object("django.conf:settings", namespace="CELERY")
    # Through the shared helper: settings.py's CELERY_BROKER_URL would win on Celery 5.3-5.6.
    CeleryConf(app).update(
        broker_url=AMQP_URL, task_default_queue=celery_processes.queue, task_always_eager=False
    )
    import retention_admin.tasks  # noqa: F401 - shared tasks register on the new app

    try:
        yield app
    finally:
        app.close()
        previous.set_current()


def test_run_now_queues_run_tier_and_a_worker_runs_it(celery_processes: Processes, broker_app: Celery) -> None:  # noqa: F811
    start_worker(celery_processes)
    row = TaskResult.objects.create(task_id="old-failure", task_name="x.y", status="FAILURE")
    TaskResult.objects.filter(pk=row.pk).update(date_done=timezone.now() - timedelta(days=10))
    client = Client()
    client.force_login(User.objects.create_superuser("op", "op@example.com", "pw"))
    tier = RetentionTier.objects.get(slug="daily")

    response = client.post(reverse("admin:retention_admin_retentiontier_run_now", args=[tier.pk]), follow=True)

    html = response.content.decode()
    assert "Queued retention_admin.tasks.run_tier(tier=&#x27;daily&#x27;)" in html, html[:2000]
    assert "worker(s) answered" in html
    celery_processes.wait_for(
        "the worker to run the daily tier",
        lambda: CleanupRun.objects.filter(trigger="task", policy__name="failures-7d", status="succeeded").first(),
    )
    assert not TaskResult.objects.filter(task_id="old-failure").exists()
    assert not CleanupRun.objects.filter(trigger="admin").exists()  # nothing ran in the request
