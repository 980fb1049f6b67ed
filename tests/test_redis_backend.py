"""RetentionRedisBackend against the real Redis server: each result's TTL comes from its policy.

TTLs are read back with PTTL. Keys carry a per-process ``global_keyprefix`` so that
other test sessions sharing the Redis database cannot interfere.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import current_app, states
from celery.app.backends import by_url
from celery.app.task import Context
from celery.result import GroupResult
from django.test import override_settings
from django.utils import timezone

from retention_admin.backends import RetentionRedisBackend
from retention_admin.models import RetentionHold, RetentionPolicy, RetentionTier
from testproject.celery import app

from .celery_conf import CeleryConf, celery_settings, task_key_prefix

REDIS_URL = os.environ.get("TEST_RETENTION_REDIS_URL", "redis://127.0.0.1:6379/10")
PREFIX = f"ratest{os.getpid()}:"  # the global_keyprefix these tests configure
# What Celery then puts before "celery-task-meta-": PREFIX itself, or on Celery 5.3-5.4
# (which always add "_") "ratest123:_". Keys are named with it, scans match PREFIX.
KEY_PREFIX = task_key_prefix(PREFIX)
BACKEND = f"retention_admin.backends.RetentionRedisBackend+{REDIS_URL}"
HOUR_MS = 3600 * 1000
DAY = timedelta(days=1)

pytestmark = [
    pytest.mark.django_db,
    # Celery's own RedisBackend._set calls SETEX, which redis-py 8 marks deprecated.
    pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning"),
]


def reset_backend() -> None:
    app._backend_cache = None
    app._local.__dict__.pop("backend", None)


def wipe(client: redis.Redis) -> None:
    """Delete this session's keys only (the database is shared with other sessions)."""
    keys = list(client.scan_iter(match=f"{PREFIX}*", count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture
def redis_client(redis_server: None) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    wipe(client)
    yield client
    wipe(client)
    client.close()


@pytest.fixture
def redis_app(redis_client: redis.Redis, tmp_path: Path, celery_conf: CeleryConf) -> Iterator[Any]:
    """The test project's Celery app with RetentionRedisBackend, configured as the README says.

    Tests change its configuration further through the same ``celery_conf``, which
    puts everything back after the test.
    """
    # The project's app is the current one, as its celery.py makes it (another
    # test may have created an app of its own since).
    previous = current_app._get_current_object()
    app.set_current()
    celery_conf.result_backend = BACKEND
    celery_conf.result_backend_transport_options = {"global_keyprefix": PREFIX}
    reset_backend()
    archive_dir = tmp_path / "archive"
    archive_dir.mkdir()
    with override_settings(
        RETENTION_ADMIN={"REDIS_POLICY_REFRESH_SECONDS": 0, "ARCHIVE_DIR": str(archive_dir)}
    ):
        yield app
    celery_conf.restore()
    reset_backend()
    previous.set_current()


def key(task_id: str) -> bytes:
    return f"{KEY_PREFIX}celery-task-meta-{task_id}".encode()


def store(task_id: str, task_name: str | None, state: str = states.SUCCESS, result: Any = "ok") -> None:
    request = Context(task=task_name, args=[1], kwargs={}, hostname="worker@test", delivery_info={})
    if state == states.FAILURE:
        result = ValueError(result)
    app.backend.store_result(task_id, result, state, request=request)


def policy(name: str, *, priority: int, **fields: Any) -> RetentionPolicy:
    return RetentionPolicy.objects.create(
        name=name, priority=priority, tier=RetentionTier.objects.get(slug="daily"), **fields
    )


def assert_ttl(client: redis.Redis, task_id: str, expected_ms: int) -> None:
    ttl = client.pttl(key(task_id))
    # Between SETEX and PTTL a few milliseconds pass; a second is plenty.
    assert expected_ms - 1000 <= ttl <= expected_ms, (task_id, ttl, expected_ms)


def test_the_class_plus_url_form_resolves_to_our_backend_and_url():
    cls, url = by_url(BACKEND, app.loader)
    assert cls is RetentionRedisBackend
    assert url == REDIS_URL


def test_each_result_is_stored_with_its_policys_ttl(redis_app, redis_client):
    policy("t-api", priority=1, task_name_pattern="api.*", keep_for=timedelta(hours=6))
    policy("t-critical", priority=2, task_name_pattern="critical.*", keep_for=None)
    policy("t-audit", priority=3, task_name_pattern="audit.*", keep_for=30 * DAY, archive=True)
    # Seeded and enabled: failures-7d (any task, FAILURE, 7 days).
    store("api-ok", "api.fetch")
    store("api-failed", "api.fetch", states.FAILURE)  # api-6h comes first (priority 1)
    store("job-failed", "jobs.resize", states.FAILURE)
    store("job-ok", "jobs.resize")
    store("critical-ok", "critical.ledger")
    store("audit-ok", "audit.login")
    assert_ttl(redis_client, "api-ok", 6 * HOUR_MS)
    assert_ttl(redis_client, "api-failed", 6 * HOUR_MS)
    assert_ttl(redis_client, "job-failed", 7 * 24 * HOUR_MS)
    # No policy governs it: Celery's result_expires (1 day by default).
    assert_ttl(redis_client, "job-ok", 24 * HOUR_MS)
    # Keep-forever and archive policies store no TTL.
    assert redis_client.pttl(key("critical-ok")) == -1
    assert redis_client.pttl(key("audit-ok")) == -1
    # The result is still Celery's to read.
    assert app.AsyncResult("api-ok").get(timeout=1) == "ok"


def test_result_size_matcher_uses_the_result_as_the_database_would_store_it(redis_app, redis_client):
    policy("t-big", priority=1, min_result_bytes=1000, keep_for=timedelta(hours=1))
    store("big", "jobs.export", result="x" * 998)  # '"' + 998 + '"' = 1000 bytes of JSON
    store("small", "jobs.export", result="x" * 997)
    assert_ttl(redis_client, "big", HOUR_MS)
    assert_ttl(redis_client, "small", 24 * HOUR_MS)


def test_held_task_ids_are_stored_without_ttl(redis_app, redis_client):
    RetentionHold.objects.create(task_id="kept", reason="incident 42")
    RetentionHold.objects.create(task_id="ended", reason="over", until=timezone.now() - DAY)
    store("kept", "jobs.resize")
    store("ended", "jobs.resize")
    assert redis_client.pttl(key("kept")) == -1
    assert_ttl(redis_client, "ended", 24 * HOUR_MS)


def test_without_result_extended_task_name_policies_do_not_match(redis_app, redis_client):
    policy("t-api", priority=1, task_name_pattern="api.*", keep_for=timedelta(hours=6))
    with celery_settings(result_extended=False):
        store("plain", "api.fetch")
    # As in the database: no task name is stored, so the remainder's expiry applies.
    assert_ttl(redis_client, "plain", 24 * HOUR_MS)


def test_group_metadata_keeps_celerys_expiry(redis_app, redis_client):
    policy("t-critical", priority=1, task_name_pattern="*", keep_for=None)
    group = GroupResult("group-1", [app.AsyncResult("a"), app.AsyncResult("b")], app=app)
    app.backend.save_group("group-1", group)
    ttl = redis_client.pttl(f"{KEY_PREFIX}celery-taskset-meta-group-1")
    assert 24 * HOUR_MS - 1000 <= ttl <= 24 * HOUR_MS


def test_a_real_task_run_stores_through_the_backend(redis_app, redis_client):
    from celery.app.trace import build_tracer

    import testproject.tasks  # noqa: F401 - registers the task with the project's app

    add = app.tasks["testproject.tasks.add"]
    policy("t-add", priority=1, task_name_pattern="testproject.tasks.add", keep_for=timedelta(hours=1))
    # Traced as a worker runs a task it received (the request names the task), not with
    # apply(): before Celery 5.3.5 an eager request carries no task name, so a result
    # stored eagerly (task_store_eager_result) has none and per-task policies miss it.
    task_id = "real-run-1"
    tracer = build_tracer(add.name, add, hostname="worker@test", app=app)
    request = {"id": task_id, "task": add.name, "hostname": "worker@test", "delivery_info": {}}
    assert tracer(task_id, (2, 3), {}, request).retval == 5
    assert_ttl(redis_client, task_id, HOUR_MS)
    assert app.AsyncResult(task_id).get(timeout=1) == 5


def test_policies_are_cached_and_only_the_results_own_id_is_asked(redis_app, redis_client):
    """Policies are read once per refresh period; per result, one query asks whether
    its own task id is kept (a hold placed a second ago must count), and no more."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    policy("t-api", priority=1, task_name_pattern="api.*", keep_for=timedelta(hours=6))
    with override_settings(RETENTION_ADMIN={"REDIS_POLICY_REFRESH_SECONDS": 3600}):
        store("warm", "api.fetch")  # loads the table once
        with CaptureQueriesContext(connection) as queries:
            for n in range(50):
                store(f"api-{n}", "api.fetch")
                store(f"job-{n}", "jobs.resize", states.FAILURE)
    assert len(queries) == 100
    assert not [q for q in queries.captured_queries if "retentionpolicy" in q["sql"]]
    assert all("retentionhold" in q["sql"] for q in queries.captured_queries)
    assert_ttl(redis_client, "api-49", 6 * HOUR_MS)
    assert_ttl(redis_client, "job-49", 7 * 24 * HOUR_MS)


def test_an_admin_change_takes_effect_within_the_refresh_period(redis_app, redis_client):
    api = policy("t-api", priority=1, task_name_pattern="api.*", keep_for=timedelta(hours=6))
    with override_settings(RETENTION_ADMIN={"REDIS_POLICY_REFRESH_SECONDS": 0.5}):
        store("before", "api.fetch")
        api.keep_for = timedelta(hours=2)
        api.save()
        store("cached", "api.fetch")  # within the refresh period: the table read before
        time.sleep(0.6)
        store("after", "api.fetch")
    assert_ttl(redis_client, "before", 6 * HOUR_MS)
    assert_ttl(redis_client, "cached", 6 * HOUR_MS)
    assert_ttl(redis_client, "after", 2 * HOUR_MS)


def test_a_successful_result_is_not_overwritten(redis_app, redis_client):
    # Celery's guard against a lost worker's late write is kept.
    store("done", "jobs.resize")
    store("done", "jobs.resize", states.FAILURE)
    assert app.AsyncResult("done").state == states.SUCCESS


def test_w006_stock_redis_backend_while_policies_exist(redis_app, celery_conf):
    from django.core.checks import registry

    from retention_admin import checks

    assert checks.check_stock_redis_backend in registry.registry.get_checks()
    celery_conf.result_backend = REDIS_URL
    reset_backend()
    messages = checks.check_stock_redis_backend()
    assert [m.id for m in messages] == ["retention_admin.W006"]
    assert "RetentionRedisBackend+redis://" in messages[0].hint
    celery_conf.result_backend = BACKEND
    assert checks.check_stock_redis_backend() == []
    RetentionPolicy.objects.update(enabled=False)
    celery_conf.result_backend = REDIS_URL
    assert checks.check_stock_redis_backend() == []


def test_the_memo_by_task_name_and_status_agrees_with_the_matcher(db):
    import itertools

    from retention_admin.matching import Governance, Rule
    from retention_admin.redis_policies import SIZE_DEPENDENT, PolicyTable

    rules = [
        Rule("big-reports", 1, task_name_pattern="reports.*", min_result_bytes=100, keep_for=DAY),
        Rule("failed-api", 2, task_name_pattern="api.*", statuses=("FAILURE",), keep_for=2 * DAY),
        Rule("big-any", 3, min_result_bytes=1000, keep_for=3 * DAY),
        Rule("api", 4, task_name_pattern="api.*", keep_for=4 * DAY),
        Rule("jobs", 5, task_name_pattern="jobs.*", keep_for=None),
    ]
    governance = Governance(rules)
    table = PolicyTable(governance, time.monotonic())
    names = [None, "reports.daily", "api.fetch", "jobs.resize", "other"]
    sizes = ["", "x" * 150, "x" * 1500]
    for _round, name, status, text in itertools.product(range(2), names, ("SUCCESS", "FAILURE"), sizes):
        expected = governance.governing(task_name=name, status=status, result=text)
        assert table.governing(task_name=name, status=status, result_text=lambda t=text: t) == expected
    # Name and status decide for failed api results; a size matcher ahead decides for the rest.
    assert table.rule_by_name_status("api.fetch", "FAILURE") == rules[1]
    assert table.rule_by_name_status("api.fetch", "SUCCESS") is SIZE_DEPENDENT
    assert table.rule_by_name_status("reports.daily", "FAILURE") is SIZE_DEPENDENT
    # The result's text is built only when a size matcher decides.
    built: list[str] = []
    table.governing(task_name="api.fetch", status="FAILURE", result_text=lambda: built.append("x") or "")
    assert built == []


def test_a_new_policy_table_starts_with_an_empty_memo(redis_app, redis_client):
    backend = app.backend
    api = policy("t-api", priority=1, task_name_pattern="api.*", keep_for=timedelta(hours=6))
    with override_settings(RETENTION_ADMIN={"REDIS_POLICY_REFRESH_SECONDS": 0.3}):
        store("first", "api.fetch")
        first = backend.policies.table()
        assert first.memo[("api.fetch", states.SUCCESS)].keep_for == timedelta(hours=6)
        api.keep_for = timedelta(hours=2)
        api.save()
        time.sleep(0.35)
        store("second", "api.fetch")
        second = backend.policies.table()
    # The remembered verdicts went with the old table.
    assert second is not first
    assert second.memo == {("api.fetch", states.SUCCESS): second.governance.rules[0]}
    assert second.governance.rules[0].keep_for == timedelta(hours=2)
    assert_ttl(redis_client, "second", 2 * HOUR_MS)
