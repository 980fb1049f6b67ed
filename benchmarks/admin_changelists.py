"""Benchmark: admin pages that touch TaskResult, on a result table of millions of rows.

Loads the cleanup benchmark's data set (``dataset.py``: 2M rows of ~1 KB by default)
into its own database, then, in a child process with that database, requests
each page with Django's test client as a logged-in superuser and records the
wall time, the number of queries and their time, and the slowest query. The
stock django-celery-results ``TaskResultAdmin`` is measured on the same data
for comparison (mounted on a second admin site).

    python benchmarks/admin_changelists.py [--rows 2000000] [--kinds postgresql,sqlite] [--reuse]

Writes benchmarks/results/admin.json and admin.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_DIR, RESULTS_DIR, ROOT, TABLE, django_env  # noqa: E402

PYTHON = sys.executable
NAME = "admin"
REPEAT = 3


def log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", flush=True)


def row_count(url: str) -> int:
    code = (
        "import sys; sys.path.insert(0, 'benchmarks'); from common import setup_django; setup_django();"
        "from django.db import connection; c = connection.cursor();"
        f"c.execute('SELECT COUNT(*) FROM {TABLE}'); print(c.fetchone()[0])"
    )
    out = subprocess.run([PYTHON, "-c", code], cwd=ROOT, env=django_env(url), capture_output=True, text=True)
    return int(out.stdout.strip() or 0) if out.returncode == 0 else -1


def prepare(kind: str, rows: int, reuse: bool) -> str:
    import databases

    db = databases.get(kind)
    url = db.url(NAME)
    if reuse and db.exists(NAME) and row_count(url) == rows:
        log(f"{kind}: reusing {rows:,} rows")
        return url
    log(f"{kind}: creating and loading {rows:,} rows")
    db.create_empty(NAME)
    subprocess.run([PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=django_env(url), check=True)
    started = time.monotonic()
    subprocess.run(
        [PYTHON, str(BENCH_DIR / "dataset.py"), "--rows", str(rows), "--due", str(int(rows * 0.9))],
        cwd=ROOT, env=django_env(url), check=True, stdout=subprocess.DEVNULL,
    )
    db.finalize(NAME)
    log(f"{kind}: loaded in {time.monotonic() - started:.0f} s")
    return url


# -- the child: measure pages ---------------------------------------------------------


def measure() -> dict[str, Any]:
    from common import setup_django

    setup_django()
    import django
    from django.contrib import admin
    from django.contrib.auth.models import User
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext, override_settings
    from django.urls import path, reverse
    from django_celery_results.admin import TaskResultAdmin as StockTaskResultAdmin
    from django_celery_results.models import TaskResult

    from retention_admin.models import RetentionPolicy

    # The stock admin on a second site, for comparison.
    stock_site = admin.AdminSite(name="stock")
    stock_site.register(TaskResult, StockTaskResultAdmin)
    urls = type(sys)("bench_admin_urls")
    urls.urlpatterns = [path("admin/", admin.site.urls), path("stock/", stock_site.urls)]  # type: ignore[attr-defined]
    sys.modules["bench_admin_urls"] = urls

    if connection.vendor == "sqlite":
        # Every real cleanup run gives SQLite sampled statistics first (executor.py);
        # a result store this app manages has them, so measure with them.
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA analysis_limit = 1000")
            cursor.execute(f"ANALYZE {TABLE}")
    user, _ = User.objects.get_or_create(username="bench", defaults={"is_staff": True, "is_superuser": True})
    client = Client()
    client.force_login(user)
    sample = TaskResult.objects.order_by("-date_done").values("task_id", "task_name").first() or {}
    failures = RetentionPolicy.objects.get(name="failures-7d")
    pattern, _ = RetentionPolicy.objects.update_or_create(
        name="bench-reports", defaults={
            "tier": failures.tier, "priority": 5, "task_name_pattern": "reports.*", "keep_for": failures.keep_for,
        },
    )
    rare, _ = RetentionPolicy.objects.update_or_create(
        name="bench-rare", defaults={
            "tier": failures.tier, "priority": 6, "task_name_pattern": "nothing.matches.*", "keep_for": failures.keep_for,
        },
    )
    changelist = "/admin/django_celery_results/taskresult/"
    stock = "/stock/django_celery_results/taskresult/"
    pages = [
        ("TaskResult changelist", changelist, {}),
        ("TaskResult changelist, status=FAILURE", changelist, {"status__exact": "FAILURE"}),
        ("TaskResult changelist, task name", changelist, {"task_name": sample.get("task_name", "")}),
        ("TaskResult changelist, page 50", changelist, {"p": "50"}),
        ("TaskResult changelist, search by task id", changelist, {"q": sample.get("task_id", "")}),
        ("TaskResult changelist, substring search", changelist, {"q": "inventory"}),
        ("stock TaskResultAdmin changelist", stock, {}),
        ("stock TaskResultAdmin, status=FAILURE", stock, {"status__exact": "FAILURE"}),
        ("policy preview: failures-7d (status)", reverse("admin:retention_admin_retentionpolicy_preview", args=[failures.pk]), {}),
        ("policy preview: reports.* (glob)", reverse("admin:retention_admin_retentionpolicy_preview", args=[pattern.pk]), {}),
        ("policy preview: a glob matching nothing (time budget)", reverse("admin:retention_admin_retentionpolicy_preview", args=[rare.pk]), {}),
        ("explain", reverse("admin:retention_admin_explain"), {"task_id": sample.get("task_id", "")}),
        ("policy changelist", reverse("admin:retention_admin_retentionpolicy_changelist"), {}),
        ("cleanup run changelist", reverse("admin:retention_admin_cleanuprun_changelist"), {}),
    ]
    results = []
    with override_settings(ROOT_URLCONF="bench_admin_urls", DEBUG=False):
        for label, url, params in pages:
            walls, query_ms, counts, slowest = [], [], [], (0.0, "")
            for attempt in range(REPEAT + 1):
                with CaptureQueriesContext(connection) as queries:
                    started = time.perf_counter()
                    response = client.get(url, params)
                    wall = (time.perf_counter() - started) * 1000
                if response.status_code != 200:
                    raise SystemExit(f"{label}: HTTP {response.status_code}")
                if attempt == 0:
                    continue  # warm-up: caches, first connection
                walls.append(wall)
                times = [float(q["time"]) * 1000 for q in queries.captured_queries]
                query_ms.append(sum(times))
                counts.append(len(times))
                for q, t in zip(queries.captured_queries, times):
                    if t > slowest[0]:
                        slowest = (t, q["sql"][:300])
            results.append({
                "page": label, "url": url, "params": params,
                "wall_ms": round(statistics.median(walls), 1),
                "query_ms": round(statistics.median(query_ms), 1),
                "queries": max(counts),
                "slowest_query_ms": round(slowest[0], 1),
                "slowest_query": slowest[1],
            })
            log(f"  {label}: {results[-1]['wall_ms']} ms, {results[-1]['queries']} queries")
    pattern.delete()
    rare.delete()
    return {
        "vendor": connection.vendor,
        "load_average": os.getloadavg(),
        "rows": _rows(connection),
        "django": django.get_version(),
        "pages": results,
    }


def _rows(connection: Any) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) FROM {TABLE}")
        return int(cursor.fetchone()[0])


# -- report ---------------------------------------------------------------------------


def render(runs: list[dict[str, Any]]) -> str:
    out = ["# Admin pages on a large result table", ""]
    out.append("Median of 3 requests after a warm-up, Django test client, superuser; "
               "`queries` is the number of SQL statements per page, `query ms` their total time. "
               "The stock django-celery-results admin is measured on the same data for comparison.")
    for run in runs:
        load = run.get("load_average")
        machine = f" (load average {load[0]:.1f} while measuring)" if load else ""
        out += ["", f"## {run['vendor']}, {run['rows']:,} rows{machine}", "",
                "| page | wall ms | query ms | queries | slowest query ms |", "| --- | ---: | ---: | ---: | ---: |"]
        for p in run["pages"]:
            out.append(f"| {p['page']} | {p['wall_ms']:,} | {p['query_ms']:,} | {p['queries']} | {p['slowest_query_ms']:,} |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--kinds", default="postgresql")
    parser.add_argument("--reuse", action="store_true", help="keep a loaded database with the same row count")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure()))
        return
    runs = []
    for kind in args.kinds.split(","):
        url = prepare(kind, args.rows, args.reuse)
        log(f"{kind}: measuring")
        env = django_env(url)
        out = subprocess.run([PYTHON, __file__, "--measure"], cwd=ROOT, env=env, check=True,
                             stdout=subprocess.PIPE, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.rows >= 2_000_000 else "-quick"
    previous = RESULTS_DIR / f"admin{suffix}.json"
    if previous.exists():
        # Keep the other databases' runs from an earlier invocation.
        measured = {run["vendor"] for run in runs}
        kept = [run for run in json.loads(previous.read_text())["runs"] if run["vendor"] not in measured]
        runs = kept + runs
    (RESULTS_DIR / f"admin{suffix}.json").write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    (RESULTS_DIR / f"admin{suffix}.md").write_text(render(runs))
    log(f"wrote {RESULTS_DIR / f'admin{suffix}.md'}")
    print(render(runs))


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
