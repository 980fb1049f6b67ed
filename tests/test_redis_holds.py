"""Holds and Redis, against the real server: a hold takes effect on the key at once,
its lift gives the key back its policy's expiry, holds are asked per id (100,000 of
them work), and the enforcer's cutoff is SQL's (``date_done < now - keep_for``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis
import time_machine
from celery import states
from django.db import connection, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django_celery_results.models import TaskResult

from retention_admin import redis_holds, redis_scan
from retention_admin.matching import Governance
from retention_admin.models import ArchiveBatch, ArchivedResult, RetentionHold
from testproject.celery import app

from .test_redis_backend import (  # noqa: F401 - fixtures
    PREFIX,
    REDIS_URL,
    key,
    policy,
    redis_app,
    redis_client,
    reset_backend,
    store,
)
from .test_redis_scan import by_name, cleanup, put

MINUTE_MS = 60 * 1000
HOUR_MS = 60 * MINUTE_MS
pytestmark = [
    pytest.mark.django_db,
    pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning"),
]


@pytest.fixture
def on_commit(django_capture_on_commit_callbacks: Any) -> Callable[[], Any]:
    """A block whose on_commit callbacks run at its end, as after a real commit."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


def ttl_near(client: redis.Redis, task_id: str, expected_ms: int, slack_ms: int = 10_000) -> bool:
    return expected_ms - slack_ms <= client.pttl(key(task_id)) <= expected_ms


# -- a hold takes effect on the key at once -----------------------------------------


def test_a_hold_placed_after_the_result_was_written_removes_its_ttl_at_once(redis_app, redis_client, on_commit):
    policy("t-live", priority=1, task_name_pattern="live.*", keep_for=timedelta(minutes=30))
    store("dash", "live.dashboard")
    assert ttl_near(redis_client, "dash", 30 * MINUTE_MS)
    with on_commit():
        RetentionHold.objects.create(task_id="dash", reason="incident 7")
    assert redis_client.pttl(key("dash")) == -1
    assert app.AsyncResult("dash").get(timeout=1) == "ok"  # the result itself is untouched


def renew_in_bulk(task_id: str) -> None:
    hold = RetentionHold.objects.get(task_id=task_id)
    hold.until = timezone.now() + timedelta(days=1)
    RetentionHold.objects.bulk_update([hold], ["until"])


PLACEMENTS: dict[str, Callable[[str], Any]] = {
    "save": lambda task_id: RetentionHold(task_id=task_id, reason="r").save(),
    "create": lambda task_id: RetentionHold.objects.create(task_id=task_id, reason="r"),
    "get_or_create": lambda task_id: RetentionHold.objects.get_or_create(task_id=task_id, defaults={"reason": "r"}),
    "bulk_create": lambda task_id: RetentionHold.objects.bulk_create([RetentionHold(task_id=task_id, reason="r")]),
    # An ended hold given a new end: update() and bulk_update() send no signals.
    "update": lambda task_id: RetentionHold.objects.filter(task_id=task_id).update(until=None),
    "bulk_update": renew_in_bulk,
}


@pytest.mark.parametrize("way", PLACEMENTS)
def test_every_way_of_placing_a_hold_removes_the_ttl(redis_app, redis_client, on_commit, way):
    if way in ("update", "bulk_update"):
        with on_commit():
            RetentionHold.objects.create(task_id="job", reason="r", until=timezone.now() - timedelta(hours=1))
    put(redis_client, "job", age=timedelta(hours=1), ttl_ms=23 * HOUR_MS)
    with on_commit():
        PLACEMENTS[way]("job")
    assert redis_client.pttl(key("job")) == -1


def test_the_stock_redis_backend_is_synced_too(redis_app, redis_client, on_commit, celery_conf):
    celery_conf.result_backend = REDIS_URL  # Celery's own RedisBackend
    reset_backend()
    put(redis_client, "job", age=timedelta(hours=1), ttl_ms=23 * HOUR_MS)
    with on_commit():
        RetentionHold.objects.create(task_id="job", reason="r")
    assert redis_client.pttl(key("job")) == -1


def test_a_hold_rolled_back_changes_nothing(redis_app, redis_client, on_commit):
    put(redis_client, "job", age=timedelta(hours=1), ttl_ms=23 * HOUR_MS)
    with on_commit():
        with pytest.raises(RuntimeError), transaction.atomic():
            RetentionHold.objects.create(task_id="job", reason="r")
            RetentionHold.objects.bulk_create([RetentionHold(task_id="job", reason="again")])
            raise RuntimeError("changed my mind")
    assert ttl_near(redis_client, "job", 23 * HOUR_MS)


@pytest.mark.django_db(transaction=True)
def test_the_key_changes_when_the_hold_commits_not_before(seeded_transactional_db, redis_app, redis_client):
    put(redis_client, "job", age=timedelta(hours=1), ttl_ms=23 * HOUR_MS)
    with transaction.atomic():
        RetentionHold.objects.create(task_id="job", reason="r")
        assert redis_client.pttl(key("job")) > 0
    assert redis_client.pttl(key("job")) == -1
    with transaction.atomic():
        RetentionHold.objects.filter(task_id="job").delete()
        assert redis_client.pttl(key("job")) == -1
    assert ttl_near(redis_client, "job", 23 * HOUR_MS)


def test_the_admin_places_and_lifts_holds_on_redis_results(redis_app, redis_client, admin_client, on_commit):
    policy("t-live", priority=1, task_name_pattern="live.*", keep_for=timedelta(minutes=30))
    put(redis_client, "dash", "live.dashboard", age=timedelta(minutes=10), ttl_ms=20 * MINUTE_MS)
    with on_commit():
        added = admin_client.post(
            reverse("admin:retention_admin_retentionhold_add"), {"task_id": "dash", "reason": "incident"}
        )
    assert added.status_code == 302
    assert redis_client.pttl(key("dash")) == -1
    hold = RetentionHold.objects.get(task_id="dash")
    with on_commit():
        admin_client.post(
            reverse("admin:retention_admin_retentionhold_changelist"),
            {"action": "lift_holds", "_selected_action": [str(hold.pk)]},
        )
    assert ttl_near(redis_client, "dash", 20 * MINUTE_MS)


# -- lifting gives the key back its policy's expiry ----------------------------------

LIFTS: dict[str, Callable[[RetentionHold], Any]] = {
    "update": lambda hold: RetentionHold.objects.filter(pk=hold.pk).update(until=timezone.now()),
    "save": lambda hold: (setattr(hold, "until", timezone.now() - timedelta(seconds=1)), hold.save()),
    "delete": lambda hold: hold.delete(),
    "queryset delete": lambda hold: RetentionHold.objects.filter(task_id=hold.task_id).delete(),
}


@pytest.mark.parametrize("way", LIFTS)
def test_lifting_a_hold_gives_back_the_policys_ttl_from_date_done(redis_app, redis_client, on_commit, way):
    policy("t-live", priority=1, task_name_pattern="live.*", keep_for=timedelta(minutes=30))
    put(redis_client, "dash", "live.dashboard", age=timedelta(minutes=10))  # held: no TTL
    with on_commit():
        hold = RetentionHold.objects.create(task_id="dash", reason="r")
    with on_commit():
        LIFTS[way](hold)
    # date_done + 30 min: 20 minutes left.
    assert ttl_near(redis_client, "dash", 20 * MINUTE_MS)


def test_a_lift_leaves_the_key_without_ttl_while_another_hold_or_restore_grace_keeps_it(
    redis_app, redis_client, on_commit
):
    put(redis_client, "twice", age=timedelta(hours=1))
    put(redis_client, "restored", age=timedelta(hours=1))
    batch = ArchiveBatch.objects.create(policy_name="p", grace_until=timezone.now() + timedelta(days=7))
    ArchivedResult.objects.create(batch=batch, task_id="restored")
    with on_commit():
        first, _second = RetentionHold.objects.bulk_create(
            [RetentionHold(task_id="twice", reason="a"), RetentionHold(task_id="twice", reason="b")]
        )
        RetentionHold.objects.create(task_id="restored", reason="r")
    with on_commit():
        first.delete()
        RetentionHold.objects.filter(task_id="restored").update(until=timezone.now())
    assert redis_client.pttl(key("twice")) == -1
    assert redis_client.pttl(key("restored")) == -1


def test_a_lifted_result_already_past_its_expiry_gets_one_second(redis_app, redis_client, on_commit):
    policy("t-live", priority=1, task_name_pattern="live.*", keep_for=timedelta(minutes=30))
    put(redis_client, "old", "live.dashboard", age=timedelta(hours=1))
    with on_commit():
        hold = RetentionHold.objects.create(task_id="old", reason="r")
    with on_commit():
        hold.delete()
    assert 0 < redis_client.pttl(key("old")) <= redis_holds.MIN_TTL_MS


def test_a_lift_gives_keep_forever_no_ttl_and_the_remainder_result_expires(redis_app, redis_client, on_commit):
    policy("t-ledger", priority=1, task_name_pattern="ledger.*", keep_for=None)
    put(redis_client, "ledger", "ledger.post", age=timedelta(days=40))
    put(redis_client, "job", "jobs.resize", age=timedelta(hours=2))
    with on_commit():
        RetentionHold.objects.bulk_create([RetentionHold(task_id=t, reason="r") for t in ("ledger", "job")])
    with on_commit():
        RetentionHold.objects.all().delete()
    assert redis_client.pttl(key("ledger")) == -1
    assert ttl_near(redis_client, "job", 22 * HOUR_MS)  # result_expires: 1 day from date_done


def test_a_hold_moved_to_another_task_id_releases_the_old_one(redis_app, redis_client, on_commit):
    put(redis_client, "first", age=timedelta(hours=1))
    put(redis_client, "second", age=timedelta(hours=1), ttl_ms=23 * HOUR_MS)
    with on_commit():
        hold = RetentionHold.objects.create(task_id="first", reason="typo")
    with on_commit():
        hold.task_id = "second"
        hold.save()
    assert ttl_near(redis_client, "first", 23 * HOUR_MS)
    assert redis_client.pttl(key("second")) == -1


def test_a_key_stored_again_since_it_was_read_is_not_changed(redis_app, redis_client):
    stale = put(redis_client, "rerun", ttl_ms=HOUR_MS)
    put(redis_client, "rerun", ttl_ms=HOUR_MS, result="new")
    client = redis_scan.connect(app.backend)
    try:
        changer = client.register_script(redis_scan.CHANGE_LUA)
        assert redis_holds._apply(changer, client, [(key("rerun"), stale, "P")]) == 0
        assert redis_client.pttl(key("rerun")) > 0
        current = redis_client.get(key("rerun"))
        assert redis_holds._apply(changer, client, [(key("rerun"), current, "P")]) == 1
    finally:
        client.close()
    assert redis_client.pttl(key("rerun")) == -1


def test_an_unreachable_redis_never_fails_a_hold_and_the_enforcer_still_keeps_it(
    redis_app, redis_client, on_commit, caplog, celery_conf
):
    policy("t-live", priority=1, task_name_pattern="live.*", keep_for=timedelta(minutes=30))
    put(redis_client, "dash", "live.dashboard", age=timedelta(minutes=40), ttl_ms=MINUTE_MS)
    celery_conf.result_backend = "retention_admin.backends.RetentionRedisBackend+redis://:s3cret-pw@127.0.0.1:6399/7"
    reset_backend()
    caplog.set_level(logging.WARNING, logger="retention_admin")
    with on_commit():
        RetentionHold.objects.create(task_id="dash", reason="incident")
    assert RetentionHold.objects.filter(task_id="dash").exists()
    assert "Redis at redis://127.0.0.1:6399/7 is not reachable" in caplog.text
    assert "s3cret-pw" not in caplog.text
    # Redis back: the key still has the TTL, and is due; the enforcer keeps it all the same.
    celery_conf.result_backend = f"retention_admin.backends.RetentionRedisBackend+{REDIS_URL}"
    reset_backend()
    assert redis_client.pttl(key("dash")) > 0
    report = cleanup("--backend", "redis")
    assert report["redis"]["held"] == 1 and by_name(report, "t-live")["deleted"] == 0
    assert redis_client.pttl(key("dash")) == -1


# -- holds are asked per id: a fresh hold counts, 100,000 work ------------------------


def test_the_writer_sees_a_hold_placed_after_its_policies_were_cached(redis_app, redis_client):
    policy("t-api", priority=1, task_name_pattern="api.*", keep_for=timedelta(hours=6))
    with override_settings(RETENTION_ADMIN={"REDIS_POLICY_REFRESH_SECONDS": 3600}):
        store("warm", "api.fetch")  # the table is loaded and cached for an hour
        RetentionHold.objects.create(task_id="fresh", reason="just placed")
        store("fresh", "api.fetch")
    assert redis_client.pttl(key("fresh")) == -1
    assert ttl_near(redis_client, "warm", 6 * HOUR_MS)


def test_the_writer_asks_about_its_one_task_id_and_never_reads_policies_per_result(redis_app, redis_client):
    policy("t-api", priority=1, task_name_pattern="api.*", keep_for=timedelta(hours=6))
    policy("t-ledger", priority=2, task_name_pattern="ledger.*", keep_for=None)
    with override_settings(RETENTION_ADMIN={"REDIS_POLICY_REFRESH_SECONDS": 3600}):
        store("warm", "api.fetch")
        with CaptureQueriesContext(connection) as queries:
            for n in range(20):
                store(f"api-{n}", "api.fetch")
                store(f"ledger-{n}", "ledger.post")  # no TTL to give: nothing to ask
    tables = {"retention_admin_retentionhold", "retention_admin_archivedresult"}
    assert queries.captured_queries
    for query in queries.captured_queries:
        sql = query["sql"]
        assert any(table in sql for table in tables) and "retentionpolicy" not in sql, sql
    held = [q["sql"] for q in queries.captured_queries if "retention_admin_retentionhold" in q["sql"]]
    assert len(held) == 20 and all("api-" in sql for sql in held)


def test_a_hundred_thousand_holds_are_respected_without_being_loaded(redis_app, redis_client):
    policy("t-api", priority=1, task_name_pattern="api.*", keep_for=timedelta(hours=6))
    RetentionHold.objects.bulk_create(
        (RetentionHold(task_id=f"held-{n:06d}", reason="audit") for n in range(100_000))
    )
    # Due keys, held or not, and fresh ones with a TTL, some held.
    for n in range(0, 100_000, 1000):
        put(redis_client, f"held-{n:06d}", "api.fetch", age=timedelta(hours=7), ttl_ms=HOUR_MS)
    for n in range(300):
        put(redis_client, f"free-{n}", "api.fetch", age=timedelta(hours=7))
    governance = Governance.load()
    with CaptureQueriesContext(connection) as queries:
        enforcer = redis_scan.Enforcer(
            app.backend, governance, rules=governance.rules, remainder=True, now=timezone.now()
        )
        report = enforcer.run()
    assert report["held"] == 100
    assert by_name({"redis": report}, "t-api")["deleted"] == 300
    assert all(redis_client.pttl(key(f"held-{n:06d}")) == -1 for n in range(0, 100_000, 1000))
    assert not any(redis_client.exists(key(f"free-{n}")) for n in range(300))
    # Asked per batch of keys, naming their ids: no query reads the hold table whole.
    hold_queries = [q["sql"] for q in queries.captured_queries if "retention_admin_retentionhold" in q["sql"]]
    assert hold_queries and all(re.search(r"(free|held)-\d", sql) for sql in hold_queries)
    # The writer: the held id is stored without a TTL, another with its policy's.
    store("held-099999", "api.fetch")
    store("free-new", "api.fetch")
    assert redis_client.pttl(key("held-099999")) == -1
    assert ttl_near(redis_client, "free-new", 6 * HOUR_MS)


# -- the cutoff is SQL's: due when date_done < now - keep_for --------------------------


def test_redis_and_the_database_agree_at_the_cutoff(redis_app, redis_client, make_result):
    keep_for = timedelta(minutes=30)
    policy("t-cut", priority=1, task_name_pattern="cut.*", keep_for=keep_for)
    # "Now" an hour ahead of Redis's clock, so that expiries set at it lie in Redis's
    # future; microseconds mid-second, so every date below carries a fraction.
    now = (timezone.now() + timedelta(hours=1)).replace(microsecond=500_000)
    ages = {"before": keep_for + timedelta(microseconds=1), "at": keep_for, "after": keep_for - timedelta(microseconds=1)}
    with time_machine.travel(now, tick=False):
        for name, age in ages.items():
            put(redis_client, f"cut-{name}", "cut.job", age=age)
            make_result(task_id=f"cut-{name}", task_name="cut.job", age=age)
        assert TaskResult.objects.get(task_id="cut-at").date_done == now - keep_for
        report = cleanup("--policy", "t-cut")
    assert next(p for p in report["policies"] if p["name"] == "t-cut")["deleted"] == 1  # the database
    assert by_name(report, "t-cut")["deleted"] == 1  # Redis
    assert set(TaskResult.objects.values_list("task_id", flat=True)) == {"cut-at", "cut-after"}
    assert not redis_client.exists(key("cut-before"))
    # Not due: their expiry (date_done + keep_for) is "now", an hour (and under a second) ahead of Redis.
    for name in ("at", "after"):
        assert HOUR_MS - 60_000 <= redis_client.pttl(key(f"cut-{name}")) <= HOUR_MS + 1000


def test_the_enforcer_cutoff_to_the_microsecond(redis_app, redis_client):
    keep_for = timedelta(minutes=30)
    policy("t-cut", priority=1, task_name_pattern="cut.*", keep_for=keep_for)
    # Ahead of Redis's clock: the expiry set at "now" lies in Redis's future.
    now: datetime = timezone.now() + timedelta(hours=1)
    with time_machine.travel(now, tick=False):
        for name, extra_us in {"before": 1, "at": 0, "after": -1}.items():
            put(redis_client, f"cut-{name}", "cut.job", age=keep_for + timedelta(microseconds=extra_us))
    governance = Governance.load()
    rules = [rule for rule in governance.rules if rule.name == "t-cut"]
    enforcer = redis_scan.Enforcer(app.backend, governance, rules=rules, remainder=False, now=now)
    report = enforcer.run()
    assert (report["policies"][0]["matched"], report["policies"][0]["deleted"]) == (1, 1)
    assert [redis_client.exists(key(f"cut-{n}")) for n in ("before", "at", "after")] == [0, 1, 1]
