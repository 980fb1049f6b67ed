"""The admin in a real browser: Chromium driven by Playwright against the live test server.

Skipped with a reason when Chromium (Debian's ``chromium`` package) or Playwright
is missing; with CI=true that is a failure. ``SCREENSHOTS_DIR=docs/screenshots``
saves the screenshots the README shows.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from django.utils import timezone
from django_celery_results.models import TaskResult

from retention_admin.models import CleanupRun, RetentionHold, RetentionPolicy, RetentionTier

from .services import in_ci

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
WIDE, NARROW = 1280, 390
DAY = timedelta(days=1)

def _require_browser() -> Any:
    problem = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # pragma: no cover - the test extra installs it
        problem = f"playwright is not installed ({exc})"
    if problem is None and not CHROMIUM.exists():
        problem = f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
    if problem:
        if in_ci():
            pytest.fail(f"CI needs a browser: {problem}")
        pytest.skip(problem)
    return sync_playwright


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_playwright = _require_browser()
    # Playwright's sync API runs an event loop in this thread; the test's own ORM
    # calls are still synchronous, which Django would otherwise refuse.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage"],
        )
        yield browser
        browser.close()
    if previous is None:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
    else:
        os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


def shoot(page: Any, name: str) -> None:
    directory = os.environ.get("SCREENSHOTS_DIR")
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(directory) / f"admin-{name}.png"), full_page=True)


def no_horizontal_overflow(page: Any) -> bool:
    # Wide tables scroll inside their own box; the page itself must not.
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"))


def results(n: int, *, task_name: str, status: str, prefix: str = "res", age_each: timedelta | None = None) -> list[TaskResult]:
    """``n`` results, the i-th done ``age_each`` ago (default: i + 2 days)."""
    rows = []
    for i in range(n):
        row = TaskResult.objects.create(
            task_id=f"{prefix}-{i:03d}", task_name=task_name, status=status,
            result='"ok"', content_type="application/json", content_encoding="utf-8",
        )
        done = timezone.now() - (age_each or DAY * (i + 2))
        TaskResult.objects.filter(pk=row.pk).update(date_done=done)
        rows.append(row)
    return rows


@pytest.fixture
def operator(seeded_transactional_db: None, live_server: Any) -> dict[str, Any]:
    User.objects.create_superuser("operator", "op@example.com", "secret-pw")
    rows = results(8, task_name="reports.build", status="SUCCESS")
    results(3, task_name="mail.send", status="FAILURE", prefix="fail", age_each=10 * DAY)
    return {"url": live_server.url, "rows": rows}


def logged_in_page(browser: Any, base: str, width: int) -> tuple[Any, Any]:
    """A new browser context at ``width`` px with the operator logged in: (context, page)."""
    context = browser.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    page.set_default_timeout(10_000)
    login(page, base)
    return context, page


def login(page: Any, base: str) -> None:
    page.goto(f"{base}/admin/login/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", "secret-pw")
    page.click("input[type=submit]")
    page.wait_for_selector("#site-name")


def test_operator_walkthrough(browser: Any, operator: dict[str, Any]) -> None:
    base = operator["url"]
    context, page = logged_in_page(browser, base, WIDE)

    # A tier: schedule in words, next run, link to its PeriodicTask; edit the schedule there.
    tier = RetentionTier.objects.get(slug="daily")
    page.goto(base + reverse("admin:retention_admin_retentiontier_change", args=[tier.pk]))
    assert "At 02:00, every day" in page.content()
    shoot(page, "tier")
    page.click(f"a:text-is(\"{tier.periodic_task.name}\")")
    page.wait_for_url("**/django_celery_beat/periodictask/**")
    crontab = tier.periodic_task.crontab
    page.goto(base + reverse("admin:django_celery_beat_crontabschedule_change", args=[crontab.pk]))
    page.fill("#id_hour", "5")
    page.click("input[name=_save]")
    page.goto(base + reverse("admin:retention_admin_retentiontier_change", args=[tier.pk]))
    assert "At 05:00, every day" in page.content()

    # Dry run from the tier page: the report is on the page, nothing deleted.
    page.click("#tier-dry-run")
    page.wait_for_selector("#run-summary")
    assert "Nothing was changed" in page.content() and "failures-7d" in page.content()
    shoot(page, "dry-run")
    assert TaskResult.objects.count() == 11
    assert CleanupRun.objects.filter(dry_run=True, trigger="admin").count() == 1

    # Create a policy, then move it ahead of failures-7d on the changelist.
    page.goto(base + reverse("admin:retention_admin_retentionpolicy_add"))
    page.fill("#id_name", "reports-3d")
    page.fill("#id_priority", "90")
    page.select_option("#id_tier", str(tier.pk))
    page.fill("#id_task_name_pattern", "reports.*")
    page.fill("#id_keep_for", "3 00:00:00")
    page.click("input[name=_save]")
    page.wait_for_selector("#result_list")
    assert RetentionPolicy.objects.get(name="reports-3d").priority == 90
    row = page.locator("#result_list tr", has_text="reports-3d")
    row.locator("input[name$='-priority']").fill("1")
    page.click("input[name=_save]")
    page.wait_for_selector(".messagelist")
    assert RetentionPolicy.objects.get(name="reports-3d").priority == 1
    assert "At 05:00, every day" in page.content() and "3 days" in page.content()
    shoot(page, "policies")

    # Its preview: what it governs, what is due, examples.
    policy = RetentionPolicy.objects.get(name="reports-3d")
    page.goto(base + reverse("admin:retention_admin_retentionpolicy_change", args=[policy.pk]))
    page.click("#policy-preview")
    page.wait_for_selector("#policy-preview-figures")
    figures = page.inner_text("#policy-preview-figures")
    assert "8 results" in figures  # governs
    assert "7 results" in figures  # due: 3 days and older (ages 2..9 days)
    shoot(page, "policy-preview")

    # Place a hold from django-celery-results' changelist, then lift it.
    held = operator["rows"][-1]
    page.goto(base + reverse("admin:django_celery_results_taskresult_changelist"))
    page.locator("#result_list tr", has_text=held.task_id).locator("input.action-select").check()
    page.select_option("select[name=action]", "place_hold")
    page.click("button[name=index]")
    page.fill("#id_reason", "incident 12: keep for the post-mortem")
    shoot(page, "place-hold")
    page.click("#place-hold-submit")
    page.wait_for_selector(".messagelist")
    assert "Placed 1 hold(s)" in page.content()
    assert RetentionHold.objects.active().filter(task_id=held.task_id).exists()

    # Explain it: governed by reports-3d, due, but held.
    page.goto(base + reverse("admin:retention_admin_explain"))
    page.fill("#id_task_id", held.task_id)
    page.click("#explain-form input[type=submit]")
    page.wait_for_selector("#explain-summary")
    summary = page.inner_text("#explain-summary")
    assert "reports-3d" in summary and "protected indefinitely" in summary
    shoot(page, "explain")

    page.goto(base + reverse("admin:retention_admin_retentionhold_changelist"))
    page.locator("#result_list tr", has_text=held.task_id).locator("input.action-select").check()
    page.select_option("select[name=action]", "lift_holds")
    page.click("button[name=index]")
    page.wait_for_selector(".messagelist")
    assert not RetentionHold.objects.active().filter(task_id=held.task_id).exists()

    # The storage dashboard: its charts are inline SVG, drawn from snapshots.
    from retention_admin.snapshots import take_snapshot

    take_snapshot(health=True)  # the health line names the backend: long, unbreakable words
    page.goto(base + reverse("admin:retention_admin_storagesnapshot_dashboard"))
    assert page.locator("svg").count() > 0
    shoot(page, "dashboard")
    context.close()


@pytest.mark.parametrize("width", [WIDE, NARROW])
def test_pages_fit_the_width(browser: Any, operator: dict[str, Any], width: int) -> None:
    base = operator["url"]
    context, page = logged_in_page(browser, base, width)
    from retention_admin.snapshots import take_snapshot

    take_snapshot(health=True)  # the dashboard's health line names the backend: long words
    tier = RetentionTier.objects.get(slug="daily")
    policy = RetentionPolicy.objects.get(name="failures-7d")
    pages = {
        "policies": reverse("admin:retention_admin_retentionpolicy_changelist"),
        "tier": reverse("admin:retention_admin_retentiontier_change", args=[tier.pk]),
        "preview": reverse("admin:retention_admin_retentionpolicy_preview", args=[policy.pk]),
        "explain": reverse("admin:retention_admin_explain") + "?task_id=fail-000",
        "results": reverse("admin:django_celery_results_taskresult_changelist"),
        "runs": reverse("admin:retention_admin_cleanuprun_changelist"),
        "dashboard": reverse("admin:retention_admin_storagesnapshot_dashboard"),
    }
    overflowing = []
    for name, url in pages.items():
        response = page.goto(base + url)
        assert response is not None and response.status == 200, name
        if not no_horizontal_overflow(page):
            overflowing.append(name)
        if width == NARROW and name in {"policies", "explain"}:
            shoot(page, f"{name}-{width}")
    assert not overflowing, f"pages wider than {width}px: {overflowing}"
    context.close()
