"""Benchmark: storage snapshot time and dashboard server time on a 2M-row PostgreSQL table.

Targets (issue 5): a snapshot takes at most 3 s on a 2M-row table; the dashboard
answers in at most 300 ms of server time with 2M rows and a year of hourly
snapshots.

Usage:
    .venv/bin/python benchmarks/dashboard_bench.py [--rows 2000000] [--database ra_snap_bench]
        [--reuse-data] [--repeat 7] [--output dashboard]

It creates (or, with --reuse-data, reuses) a PostgreSQL database on the loopback
server, migrates it, fills it with ``benchmarks/dataset.py`` (the cleanup
benchmark's generator: ~1 KB results, SUCCESS and FAILURE, 10 task names),
runs ``VACUUM ANALYZE`` as autovacuum would have, then:

1. times ``take_snapshot()`` ``--repeat`` times (each a full snapshot: statistics,
   sample, table sizes, stuck results; the backend round trip is timed apart);
2. replaces the snapshots with a year of hourly ones (8,760, with figures by
   status and 20 top task names each, like real ones) and 400 cleanup runs;
3. logs in to the admin with Django's test client (the whole request handling,
   middleware, view, templates, in-process: server time without the network)
   and requests the dashboard for every period ``--repeat`` times, recording the
   time and the SQL of each request, and checking that none reads the result
   table.

Results go to ``benchmarks/results/<output>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))

from common import RESULTS_DIR, TABLE, django_env, postgres_url  # noqa: E402

PYTHON = sys.executable


def prepare(database: str, rows: int, reuse: bool) -> None:
    import psycopg

    with psycopg.connect(postgres_url("postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone()
        if exists and reuse:
            with psycopg.connect(postgres_url(database)) as db:
                have = db.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]
            if have >= rows * 0.95:
                print(f"reusing {database} ({have:,} rows)", flush=True)
                subprocess.run(
                    [PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"],
                    cwd=ROOT, env=django_env(postgres_url(database)), check=True,
                )
                return
        if exists:
            conn.execute(f'DROP DATABASE "{database}"')
        conn.execute(f'CREATE DATABASE "{database}"')
    env = django_env(postgres_url(database))
    subprocess.run([PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
    print(f"generating {rows:,} rows ...", flush=True)
    subprocess.run(
        [PYTHON, str(BENCH_DIR / "dataset.py"), "--rows", str(rows), "--due", str(rows // 2)],
        cwd=ROOT, env=env, check=True,
    )
    with psycopg.connect(postgres_url(database), autocommit=True) as db:
        db.execute(f"VACUUM (ANALYZE) {TABLE}")


def measure(repeat: int) -> dict:
    from common import setup_django

    setup_django()
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext
    from django.utils import timezone

    from retention_admin.health import check_backend
    from retention_admin.models import CleanupRun, StorageSnapshot
    from retention_admin.snapshots import take_snapshot

    table_rows = None
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {TABLE}")
        table_rows = cursor.fetchone()[0]

    # 1. snapshots
    StorageSnapshot.objects.all().delete()
    snap_times = []
    snapshot = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        snapshot = take_snapshot()
        snap_times.append(time.perf_counter() - t0)
    assert snapshot is not None
    t0 = time.perf_counter()
    health = check_backend()
    health_s = time.perf_counter() - t0
    real = {
        "task_rows": snapshot.task_rows,
        "rows_estimated": snapshot.rows_estimated,
        "rows_by_status": snapshot.rows_by_status,
        "table_bytes": snapshot.table_bytes,
        "details": snapshot.details,
    }
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT status, count(*) FROM {TABLE} GROUP BY status")
        exact_status = dict(cursor.fetchall())

    # 2. a year of hourly snapshots, 400 runs
    StorageSnapshot.objects.all().delete()
    CleanupRun.objects.filter(options__bench=True).delete()
    rng = random.Random(3)
    now = timezone.now()
    top = snapshot.rows_by_task
    profile = snapshot.task_profile
    batch = []
    for hour in range(365 * 24, 0, -1):
        scale = 0.5 + 0.5 * (365 * 24 - hour) / (365 * 24) + rng.random() * 0.02
        rows_by_status = {k: int(v * scale) for k, v in snapshot.rows_by_status.items()}
        batch.append(
            StorageSnapshot(
                taken_at=now - timedelta(hours=hour),
                task_rows=sum(rows_by_status.values()),
                rows_by_status=rows_by_status,
                bytes_by_status={k: int(v * scale) for k, v in snapshot.bytes_by_status.items()},
                rows_by_task=top,
                task_profile=profile,
                table_bytes=int((snapshot.table_bytes or 0) * scale),
                rows_estimated=True,
                redis={"used_memory": int(50e6 * scale), "keys": {"task": 1000, "group": 0, "chord": 0, "other": 3},
                       "keys_without_ttl": 0, "estimated": False, "error": None},
                details=snapshot.details,
            )
        )
    StorageSnapshot.objects.bulk_create(batch, batch_size=1000)
    take_snapshot()  # the latest, real one
    runs = [
        CleanupRun(
            trigger="task", status="succeeded", started_at=now - timedelta(hours=h * 21),
            deleted=rng.randint(1000, 90000), archived=rng.randint(0, 5000), options={"bench": True},
            report={"policies": [{"name": "failures-7d", "matched": 10, "deleted": 10}]},
        )
        for h in range(400)
    ]
    CleanupRun.objects.bulk_create(runs)

    # 3. the dashboard
    user_model = get_user_model()
    user, _ = user_model.objects.get_or_create(username="bench-admin", defaults={"is_staff": True, "is_superuser": True})
    user.is_staff = user.is_superuser = True
    user.save()
    client = Client()
    client.force_login(user)
    url = "/admin/retention_admin/storagesnapshot/dashboard/"
    client.get(url)  # warm up: template loading, imports
    pages = {}
    for period in ("24h", "7d", "30d", "90d"):
        times = []
        queries = 0
        size = 0
        for _ in range(repeat):
            with CaptureQueriesContext(connection) as captured:
                t0 = time.perf_counter()
                response = client.get(url, {"period": period})
                times.append(time.perf_counter() - t0)
            assert response.status_code == 200, response.status_code
            assert not [q for q in captured.captured_queries if TABLE in q["sql"]], "dashboard read the result table"
            queries = len(captured.captured_queries)
            size = len(response.content)
        pages[period] = {
            "median_ms": round(statistics.median(times) * 1000, 1),
            "max_ms": round(max(times) * 1000, 1),
            "queries": queries,
            "html_bytes": size,
        }
    StorageSnapshot.objects.all().delete()
    CleanupRun.objects.filter(options__bench=True).delete()
    return {
        "table_rows_exact": table_rows,
        "snapshot": {
            "median_s": round(statistics.median(snap_times), 3),
            "max_s": round(max(snap_times), 3),
            "runs": len(snap_times),
            "figures": real,
            "exact_rows_by_status": exact_status,
        },
        "backend_round_trip_ms": round(health_s * 1000, 1),
        "backend_ok": health.ok,
        "snapshots_in_table": len(batch) + 1,
        "dashboard": pages,
    }


def write(name: str, data: dict) -> None:
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(data, indent=2) + "\n")
    snap = data["snapshot"]
    lines = [
        "# Storage snapshot and dashboard benchmark",
        "",
        f"{data['when']}, {data['machine']}, PostgreSQL {data['postgres']}, {data['table_rows_exact']:,} TaskResult rows "
        f"(~1 KB results), {data['snapshots_in_table']:,} hourly snapshots (a year) and 400 cleanup runs for the dashboard.",
        "",
        "| measurement | median | max | target |",
        "| --- | ---: | ---: | ---: |",
        f"| `take_snapshot()` ({snap['runs']} runs) | {snap['median_s']*1000:.0f} ms | {snap['max_s']*1000:.0f} ms | ≤ 3000 ms |",
    ]
    for period, page in data["dashboard"].items():
        lines.append(
            f"| dashboard, period {period} ({page['queries']} queries, {page['html_bytes']/1024:.0f} KB HTML) "
            f"| {page['median_ms']:.0f} ms | {page['max_ms']:.0f} ms | ≤ 300 ms |"
        )
    figures = snap["figures"]
    lines += [
        "",
        f"Snapshot figures: {figures['task_rows']:,} rows (estimated: {figures['rows_estimated']}; exact count "
        f"{data['table_rows_exact']:,}), by status {figures['rows_by_status']} (exact: {snap['exact_rows_by_status']}), "
        f"method {figures['details'].get('rows_method')}, {figures['details'].get('sample_rows')} rows sampled.",
        f"Result backend round trip (not part of the snapshot timing): {data['backend_round_trip_ms']} ms.",
        "No dashboard request read the result table (checked on every request's SQL).",
        "",
    ]
    (RESULTS_DIR / f"{name}.md").write_text("\n".join(lines))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--database", default="ra_snap_bench")
    parser.add_argument("--reuse-data", action="store_true")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--output", default="dashboard")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.repeat)))
        return 0
    prepare(args.database, args.rows, args.reuse_data)
    env = django_env(postgres_url(args.database))
    out = subprocess.run(
        [PYTHON, __file__, "--measure", "--repeat", str(args.repeat)],
        cwd=ROOT, env=env, check=True, capture_output=True, text=True,
    )
    data = json.loads(out.stdout.strip().splitlines()[-1])
    import psycopg

    with psycopg.connect(postgres_url(args.database)) as db:
        data["postgres"] = db.execute("SHOW server_version").fetchone()[0]
    data["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load = os.getloadavg()[0]
    # The machine is shared: say how busy it was, since every figure depends on it.
    data["machine"] = (
        f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, "
        f"load average {load:.1f} at the end"
    )
    write(args.output, data)
    print((RESULTS_DIR / f"{args.output}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
