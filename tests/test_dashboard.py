"""The storage dashboard in the admin, its banner, and the recommendations."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_celery_results.models import TaskResult

from retention_admin.backfill import backfill
from retention_admin.models import CleanupRun, RetentionPolicy, StorageSnapshot
from retention_admin.recommendations import recommend
from retention_admin.snapshots import take_snapshot

pytestmark = pytest.mark.django_db
URL = "/admin/retention_admin/storagesnapshot/dashboard/"


@pytest.fixture(autouse=True)
def no_cached_health() -> Iterator[None]:
    """The backend health lives in Django's cache: start and end each test without one."""
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def admin_client() -> Client:
    user = User.objects.create_superuser("boss", "boss@example.com", "pw")
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def history(make_result: Any) -> None:
    """A week of reconstructed snapshots, a real run, measured snapshots."""
    for hours in range(0, 24 * 7, 5):
        make_result(age=timedelta(hours=hours), task_name="reports.build", result='"' + "x" * 300 + '"')
    make_result(age=timedelta(days=9), status="FAILURE", task_name="mail.send")
    take_snapshot()
    backfill(7)
    CleanupRun.objects.create(trigger="task", status="succeeded", deleted=5, archived=2)


def test_dashboard_shows_charts_and_tables_without_reading_the_result_table(admin_client, history):
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(URL, {"period": "7d"})
    assert response.status_code == 200
    table = TaskResult._meta.db_table
    assert not [q["sql"] for q in queries.captured_queries if table in q["sql"]]
    html = response.content.decode()
    for title in (
        "Task results stored, by status", "Table + index size, by status", "Redis memory",
        "Deleted and archived per run", "Top task names by bytes", "Recommendations",
        "Result backend health", "Forecast",
    ):
        assert title in html, title
    # Server-rendered SVG, no script, no CDN.
    assert html.count("class=\"pygal-chart\"") == 4  # rows, bytes, runs, top tasks (no Redis here)
    assert "<script" not in html.split('<div id="content-main"', 1)[1]
    assert "kozea.github.io" not in html and "cdn" not in html.lower()
    assert "No Redis figures in this period" in html
    # Each chart has its table: units, dates, and the estimates marked.
    assert html.count('<table class="storage-table">') == 4
    assert '<th scope="col">time</th><th scope="col">kind</th><th scope="col">total</th><th scope="col">SUCCESS</th>' in html
    assert "estimate (reconstructed)" in html and "≈" in html
    assert "are reconstructed estimates (snapshot_results --backfill)" in html
    assert re.search(r"<td>[\d.]+ (KB|MB|bytes)</td>", html)
    assert "reports.build" in html
    assert "At the last 7 days&#x27; rate" in html or "Over the last 7 days" in html


@pytest.mark.parametrize("period", ["24h", "7d", "30d", "90d"])
def test_every_period(admin_client, history, period):
    response = admin_client.get(URL, {"period": period})
    assert response.status_code == 200
    assert f'<a href="?period={period}" aria-current="page">' in response.content.decode()


def test_an_unknown_period_falls_back_with_a_message(admin_client, history):
    response = admin_client.get(URL, {"period": "1y"}, follow=True)
    assert response.status_code == 200
    html = response.content.decode()
    assert "Unknown period &#x27;1y&#x27;; choose one of 24h, 7d, 30d, 90d. Showing 7 days." in html
    assert '<a href="?period=7d" aria-current="page">' in html


def test_an_empty_dashboard(admin_client):
    html = admin_client.get(URL).content.decode()
    assert "No snapshot yet." in html and "No snapshots in this period yet." in html
    assert "Not checked yet" in html


def test_points_are_thinned_to_one_per_bucket(admin_client):
    now = timezone.now()
    StorageSnapshot.objects.bulk_create(
        StorageSnapshot(taken_at=now - timedelta(minutes=10 * i), task_rows=i, rows_by_status={"SUCCESS": i})
        for i in range(6 * 24 * 30)  # every 10 minutes for 30 days
    )
    from retention_admin.dashboard import load_points

    points = load_points(now - timedelta(days=30), timedelta(hours=4))
    assert 180 <= len(points) <= 181
    # The last snapshot of each bucket: the newest is the latest snapshot.
    assert points[-1].task_rows == 0


def test_permissions(client, history):
    assert client.get(URL).status_code == 302  # to the login page
    staff = User.objects.create_user("staff", password="pw", is_staff=True)
    client.force_login(staff)
    assert client.get(URL).status_code == 403
    staff.user_permissions.add(Permission.objects.get(codename="view_storagesnapshot"))
    assert client.get(URL).status_code == 200


def test_check_now_records_the_backend_health(admin_client):
    response = admin_client.post(URL + "?period=24h")
    assert response.status_code == 302 and response["Location"].endswith("?period=24h")
    html = admin_client.get(URL).content.decode()
    assert "Result backend round trip ok" in html
    assert "<strong class=\"storage-ok\">ok</strong>" in html and "ago (" in html
    assert not TaskResult.objects.exists()


def test_banner_on_the_dashboard_and_the_app_index(admin_client, make_result, settings):
    settings.RETENTION_ADMIN = {"ALERT_ROWS": 1}
    make_result()
    make_result()
    take_snapshot()
    message = "The task result table is 2 rows, over the threshold of 1 rows."
    assert message in admin_client.get(URL).content.decode()
    index = admin_client.get("/admin/retention_admin/").content.decode()
    assert message in index and "Threshold crossed" in index
    assert f'href="{URL}"' in index
    changelist = admin_client.get("/admin/retention_admin/storagesnapshot/").content.decode()
    assert f'href="{URL}"' in changelist


def test_app_index_without_alerts_still_links_the_dashboard(admin_client):
    index = admin_client.get("/admin/retention_admin/").content.decode()
    assert "Threshold crossed" not in index and "Storage growth dashboard" in index


# -- recommendations -------------------------------------------------------------
def test_recommendations_on_crafted_data(make_result, celery_conf):
    for _ in range(25):
        make_result(task_name="pings.heartbeat", result=None)
    make_result(task_name="pings.heartbeat", result="null")
    for _ in range(3):
        make_result(task_name="exports.big", result='"' + "x" * 5000 + '"')
    make_result(task_name="api.call", result='"' + "y" * 3000 + '"')
    make_result(task_name="jobs.hang", status="STARTED", age=timedelta(days=2))
    make_result(task_name="jobs.hang", status="FAILURE")  # failures-7d has something to match
    RetentionPolicy.objects.filter(name="api-6h").update(enabled=True)  # api.* has its own policy
    RetentionPolicy.objects.filter(name="audit-30d").update(enabled=True)  # audit.* matches nothing
    for _ in range(3):
        CleanupRun.objects.create(
            trigger="task", status="succeeded",
            report={"policies": [{"name": "failures-7d", "matched": 0, "deleted": 0}]},
        )
    celery_conf.result_backend = "django-db"

    take_snapshot()
    found = {(r.kind, r.subject): r for r in recommend()}

    empty = found[("ignore_result", "pings.heartbeat")]
    assert empty.title == "pings.heartbeat: every stored result is empty"
    assert "26 results stored, all null or empty" in empty.detail and "ignore_result=True" in empty.detail
    assert ("ignore_result", "exports.big") not in found
    assert ("no_policy", "exports.big") in found
    assert ("no_policy", "api.call") not in found  # governed by api-6h, its own
    idle = found[("idle_policy", "audit-30d")]
    assert "no stored task name matches 'audit.*'" in idle.detail
    assert found[("idle_policy", "failures-7d")].title == "Policy failures-7d matched nothing in its last 3 runs"
    stuck = found[("stuck", "")]
    assert stuck.title == "1 results stuck in PENDING/STARTED for more than 24 hours"
    assert found[("check", "retention_admin.W001")].title.startswith("CELERY_RESULT_BACKEND is 'django-db'")


def test_recommendations_are_shown_on_the_dashboard(admin_client, make_result):
    for _ in range(20):
        make_result(task_name="pings.heartbeat", result="")
    take_snapshot()
    html = admin_client.get(URL).content.decode()
    assert "pings.heartbeat: every stored result is empty" in html


def test_many_runs_are_summed_per_day(admin_client):
    now = timezone.now()
    CleanupRun.objects.bulk_create(
        CleanupRun(trigger="task", status="succeeded", started_at=now - timedelta(hours=2 * i), deleted=10, archived=1)
        for i in range(80)
    )
    CleanupRun.objects.create(trigger="command", status="succeeded", dry_run=True, deleted=999)  # not counted
    html = admin_client.get(URL, {"period": "30d"}).content.decode()
    assert "Deleted and archived per day" in html
    assert '<th scope="col">day</th><th scope="col">deleted</th><th scope="col">archived</th><th scope="col">runs</th>' in html
    assert "<td>999</td>" not in html
    today = timezone.localtime(now).strftime("%Y-%m-%d")
    assert re.search(rf"<td>{today}</td><td>\d+</td><td>\d+</td><td>\d+</td>", html)


def test_forecast_from_the_last_seven_days(settings):
    from retention_admin.dashboard import forecast

    now = timezone.now()
    StorageSnapshot.objects.create(taken_at=now - timedelta(days=7), table_bytes=1000, task_rows=100)
    StorageSnapshot.objects.create(taken_at=now - timedelta(days=3), table_bytes=50_000, task_rows=100)
    StorageSnapshot.objects.create(taken_at=now, table_bytes=8000, task_rows=100)
    settings.RETENTION_ADMIN = {"ALERT_BYTES": 20_000}
    table, rows = forecast(now).lines
    # The net change (1000 -> 8000 bytes in 7 days), not a line through the peak.
    assert table == (
        "At the last 7 days' rate (+1000 bytes a day) the table reaches the alert threshold of "
        f"19.5 KB, in 12 days ({timezone.localtime(now + timedelta(days=12)):%Y-%m-%d})."
    )
    assert rows == "Over the last 7 days the row count did not grow; it is 100 now."
    settings.RETENTION_ADMIN = {}
    StorageSnapshot.objects.filter(table_bytes=8000).update(table_bytes=500)
    assert forecast(now).lines[0] == (
        "Over the last 7 days the table shrank by 71 bytes a day; it is 500 bytes now."
    )


def test_redis_memory_chart_from_the_snapshots(admin_client):
    now = timezone.now()
    for hours, memory in ((3, 1_000_000), (2, 2_000_000), (1, 3_000_000)):
        StorageSnapshot.objects.create(
            taken_at=now - timedelta(hours=hours), task_rows=0,
            redis={"used_memory": memory, "keys": {"task": 3, "group": 0, "chord": 0, "other": 0},
                   "keys_without_ttl": 0, "estimated": False, "error": None},
        )
    StorageSnapshot.objects.create(taken_at=now, task_rows=0, redis={"error": "Redis at redis://x:6379/0 is not reachable"})
    html = admin_client.get(URL, {"period": "24h"}).content.decode()
    section = html.split('id="chart-redis"', 1)[1].split("</section>", 1)[0]
    assert 'class="pygal-chart"' in section
    assert '<th scope="col">time</th><th scope="col">Redis used memory</th>' in section
    assert "<td>2.9 MB</td>" in section and "<td>976.6 KB</td>" in section
    assert section.count("<tr>") == 1 + 3  # the unreachable snapshot has no figure
