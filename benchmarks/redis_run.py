"""Redis benchmark: the SCAN enforcer vs the KEYS loop, and the cost of writing through RetentionRedisBackend.

Enforcer: two Redis databases are filled with the same ``--keys`` result keys (a
realistic mix of task names, statuses, sizes and ages; a third without TTL, as
written while ``result_expires`` was None). Then, each in its own process:

* ``keys-loop``: the usual advice, faithfully: ``KEYS celery-task-meta-*``, then per
  key ``TTL``, and for a key without one ``GET``, then ``DEL`` when it is older than
  ``result_expires`` or ``EXPIRE`` with the time it has left.
* ``enforcer``: ``cleanup_results --backend redis`` (SCAN, pipelined reads, policies,
  archives), called for real.

Reported: wall time, keys/s, the ratio, peak RSS of the process (and of the enforcer
on a tenth of the keys, to see that memory stays flat), every SLOWLOG entry of
either client (each process names its connection), and where the time went: CPU
seconds of the process (all its threads) and of the Redis server during each
method, and Redis's time per command (INFO commandstats, before and after). Write path: the stock Celery
RedisBackend vs RetentionRedisBackend storing the same results, interleaved rounds,
median cost per result.

    make bench-redis                         # 1M keys (about 10 minutes)
    make bench-redis ARGS="--quick"          # 100k keys
    .venv/bin/python benchmarks/redis_run.py --help

Uses Redis databases 11 (write path), 12 and 13 on 127.0.0.1:6379 (``BENCH_REDIS_URL``
overrides the server, loopback only) and flushes only those; Django uses its own
SQLite file under var/bench. Results: benchmarks/results/redis.json and redis.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, ROOT, VAR_DIR, django_env, peak_rss_mb, round_floats, setup_django  # noqa: E402

SERVER = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")
WRITE_DB, LOOP_DB, ENFORCER_DB = 11, 12, 13
SMALL_DB = ENFORCER_DB  # the tenth-size run goes first, before the full data set is loaded
SQLITE = VAR_DIR / "redis_bench.sqlite3"
ARCHIVE_DIR = VAR_DIR / "redis-archive"
RESULT_EXPIRES = 86400  # Celery's default, what both methods apply to keys without TTL
CLIENT_NAMES = {"keys-loop": "retention-bench-keys-loop", "enforcer": "retention-bench-enforcer"}

# (task name, weight): the policies enabled below govern api.*, dashboard.*, audit.*
# (archive), compliance.* (archive), critical.* (forever) and failures; jobs.* and
# reports.* are the remainder (result_expires).
TASKS = [
    ("api.fetch_user", 18), ("api.search", 12), ("dashboard.refresh", 20), ("jobs.resize", 15),
    ("jobs.email", 10), ("reports.daily", 8), ("audit.login", 8), ("compliance.export", 4),
    ("critical.ledger", 5),
]
STATUSES = [("SUCCESS", 90), ("FAILURE", 8), ("STARTED", 1), ("RETRY", 1)]


def url(db: int) -> str:
    return f"{SERVER}/{db}"


def check_loopback() -> None:
    host = urlsplit(SERVER).hostname
    if host not in {"127.0.0.1", "localhost", "::1"}:
        raise SystemExit(f"refusing to benchmark against a non-loopback Redis: {host}")


# -- data ----------------------------------------------------------------------------


def populate(db: int, keys: int, seed: int = 7) -> dict[str, int]:
    """Fill ``db`` with ``keys`` result keys; the same seed gives the same keys."""
    import redis

    rng = random.Random(seed)
    client = redis.Redis.from_url(url(db))
    client.flushdb()
    names = [n for n, _w in TASKS]
    name_weights = [w for _n, w in TASKS]
    statuses = [s for s, _w in STATUSES]
    status_weights = [w for _s, w in STATUSES]
    now = datetime.now(timezone.utc)
    pipe = client.pipeline(transaction=False)
    without_ttl = 0
    for n in range(keys):
        name = rng.choices(names, name_weights)[0]
        status = rng.choices(statuses, status_weights)[0]
        no_ttl = n % 3 == 0
        if no_ttl:
            # Written while result_expires was None: any age up to 90 days.
            age = rng.uniform(0, 90 * 86400)
            without_ttl += 1
        else:
            # Written with Celery's TTL (1 day): alive, so younger than a day.
            age = rng.uniform(0, RESULT_EXPIRES - 60)
        done = now - timedelta(seconds=age)
        size = int(rng.lognormvariate(5.5, 0.8))  # median ~250 bytes, long tail
        meta = {
            "status": status,
            "result": {"value": "x" * min(size, 20000)} if status != "FAILURE" else {
                "exc_type": "ValueError", "exc_message": ["bad input"], "exc_module": "builtins"},
            "traceback": "Traceback (most recent call last):\n  ...\nValueError: bad input" if status == "FAILURE" else None,
            "children": [],
            "date_done": done.isoformat() if status in ("SUCCESS", "FAILURE") else None,
            "name": name,
            "args": [n],
            "kwargs": {},
            "worker": "celery@bench",
            "retries": 0,
            "queue": "celery",
            "task_id": f"bench-{n:08d}",
        }
        value = json.dumps(meta)
        key = f"celery-task-meta-bench-{n:08d}"
        if no_ttl:
            pipe.set(key, value)
        else:
            pipe.set(key, value, px=int((RESULT_EXPIRES - age) * 1000))
        if len(pipe) >= 5000:
            pipe.execute()
            # As Celery does, date_done and the TTL start together: with one "now"
            # for the whole fill, keys written seconds later expired that much
            # after date_done + result_expires, and the enforcer "fixed" their
            # TTLs (138k extra changes at 1M keys).
            now = datetime.now(timezone.utc)
    pipe.execute()
    client.close()
    return {"keys": keys, "without_ttl": without_ttl}


def setup_policies() -> None:
    """The seeded policies with this data set's task names, enabled; archives to var/bench."""
    from retention_admin.models import RetentionPolicy

    patterns = {
        "critical-forever": "critical.*", "compliance-90d": "compliance.*", "audit-30d": "audit.*",
        "api-6h": "api.*", "dashboards-30m": "dashboard.*",
    }
    for name, pattern in patterns.items():
        RetentionPolicy.objects.filter(name=name).update(task_name_pattern=pattern, enabled=True)


def django_child_env() -> dict[str, str]:
    env = django_env(f"sqlite:///{SQLITE}")
    env["RETENTION_ADMIN_JSON"] = json.dumps({"ARCHIVE_DIR": str(ARCHIVE_DIR)})
    return env


# -- the two methods, each in its own process ----------------------------------------


def cpu_seconds() -> float:
    """CPU time of this process so far, every thread, user and system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child_keys_loop(db: int) -> dict[str, Any]:
    import redis

    client = redis.Redis.from_url(url(db), client_name=CLIENT_NAMES["keys-loop"])
    cpu = cpu_seconds()
    started = time.monotonic()
    now = time.time()
    deleted = expired = seen = 0
    for key in client.keys("celery-task-meta-*"):
        seen += 1
        if client.ttl(key) != -1:
            continue
        value = client.get(key)
        if value is None:
            continue
        done = json.loads(value).get("date_done")
        done_at = datetime.fromisoformat(done).timestamp() if done else now
        left = int(done_at + RESULT_EXPIRES - now)
        if left <= 0:
            client.delete(key)
            deleted += 1
        else:
            client.expire(key, left)
            expired += 1
    return {
        "seconds": time.monotonic() - started,
        "cpu_s": cpu_seconds() - cpu,
        "keys": seen,
        "deleted": deleted,
        "ttl_set": expired,
        "peak_rss_mb": peak_rss_mb(),
    }


def child_enforcer(db: int) -> dict[str, Any]:
    import io

    setup_django()
    from django.core.management import call_command

    from testproject.celery import app

    app.conf.result_backend = f"retention_admin.backends.RetentionRedisBackend+{url(db)}"
    app.conf.redis_client_name = CLIENT_NAMES["enforcer"]
    cpu = cpu_seconds()
    started = time.monotonic()
    out = io.StringIO()
    call_command("cleanup_results", "--backend", "redis", "--json", "--no-progress", stdout=out)
    seconds = time.monotonic() - started
    cpu = cpu_seconds() - cpu
    report = json.loads(out.getvalue())
    redis_report = report["redis"]
    return {
        "seconds": seconds,
        "cpu_s": cpu,
        "keys": redis_report["scanned"],
        "deleted": redis_report["totals"]["deleted"],
        "archived": redis_report["totals"]["archived"],
        "ttl_set": redis_report["totals"]["ttl_fixed"],
        "status": report["status"],
        "peak_rss_mb": peak_rss_mb(),
        "report": redis_report,
    }


def run_child(method: str, db: int) -> dict[str, Any]:
    import redis

    client = redis.Redis.from_url(url(db))
    since = int(client.time()[0])
    server_cpu, commands = _server_cpu(client), _command_usec(client)
    proc = subprocess.run(
        [sys.executable, __file__, "--child", method, "--db", str(db)],
        cwd=ROOT, env=django_child_env(), capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{method} failed:\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    # The server's CPU and its time per command while the method ran (the server
    # is shared: other sessions' commands, if any, are counted too).
    result["redis_cpu_s"] = _server_cpu(client) - server_cpu
    after = _command_usec(client)
    spent = {name: (usec - commands.get(name, 0)) / 1e6 for name, usec in after.items()}
    result["redis_command_s"] = dict(sorted(((n, s) for n, s in spent.items() if s >= 0.001), key=lambda i: -i[1]))
    slow = [
        {"ms": entry["duration"] / 1000, "command": _command_text(entry)}
        for entry in client.slowlog_get(128)
        if entry["start_time"] >= since and _client_name(entry) == CLIENT_NAMES[method]
    ]
    result["slowlog"] = sorted(slow, key=lambda e: -e["ms"])[:10]
    result["slowlog_entries"] = len(slow)
    result["slowlog_max_ms"] = max((e["ms"] for e in slow), default=0.0)
    result["keys_left"] = client.dbsize()
    client.close()
    return result


def _server_cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _command_usec(client: Any) -> dict[str, int]:
    """Microseconds Redis spent in each command so far (a script's inner commands count twice)."""
    return {
        name.removeprefix("cmdstat_"): int(stats["usec"])
        for name, stats in client.info("commandstats").items()
    }


def _client_name(entry: dict[str, Any]) -> str:
    name = entry.get("client_name", b"")
    return name.decode() if isinstance(name, bytes) else str(name)


def _command_text(entry: dict[str, Any]) -> str:
    command = entry.get("command", b"")
    text = command.decode(errors="replace") if isinstance(command, bytes) else str(command)
    return text[:80]


# -- write path ---------------------------------------------------------------------------


def write_path(results: int, rounds: int = 40) -> dict[str, Any]:
    """Cost per stored result: stock RedisBackend vs RetentionRedisBackend.

    Rounds alternate between the two (which goes first alternates too); the ratio
    is the median of each round's ratio, so a machine whose load drifts (it is
    shared) compares like with like.
    """
    import redis
    from celery.app.task import Context
    from celery.backends.redis import RedisBackend

    from retention_admin.backends import RetentionRedisBackend
    from testproject.celery import app

    client = redis.Redis.from_url(url(WRITE_DB))
    client.flushdb()
    backends = {
        "stock": RedisBackend(app=app, url=url(WRITE_DB)),
        "retention": RetentionRedisBackend(app=app, url=url(WRITE_DB)),
    }
    names = [n for n, _w in TASKS]
    per_round = max(1, results // rounds)
    timings: dict[str, list[float]] = {name: [] for name in backends}
    rng = random.Random(3)
    backends["retention"].policies.table()  # the table a worker would have loaded at its first result
    for round_no in range(rounds):
        order = list(backends.items())
        if round_no % 2:
            order.reverse()  # neither always goes first
        for label, backend in order:
            requests = [
                Context(task=rng.choice(names), args=[n], kwargs={}, hostname="celery@bench", delivery_info={})
                for n in range(per_round)
            ]
            started = time.perf_counter()
            for n, request in enumerate(requests):
                state = "FAILURE" if n % 12 == 0 else "SUCCESS"
                value = ValueError("bad input") if state == "FAILURE" else {"value": "x" * 200}
                backend.store_result(f"w-{label}-{round_no}-{n}", value, state, request=request)
            timings[label].append((time.perf_counter() - started) / per_round * 1e6)
    ttls = {
        label: client.pttl(f"celery-task-meta-w-{label}-0-1") for label in backends
    }
    client.flushdb()
    client.close()
    stock = statistics.median(timings["stock"])
    ours = statistics.median(timings["retention"])
    ratios = sorted(o / s for o, s in zip(timings["retention"], timings["stock"]))
    return {
        "results_per_backend": per_round * rounds,
        "rounds": rounds,
        "stock_us": stock,
        "retention_us": ours,
        "ratio": statistics.median(ratios),
        "ratio_quartiles": [ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]],
        "round_us": timings,
        "example_pttl_ms": ttls,
    }


# -- main -----------------------------------------------------------------------------------


def _hiredis() -> bool:
    try:
        import hiredis  # noqa: F401
    except ImportError:
        return False
    return True


def render(results: dict[str, Any]) -> str:
    e = results["enforcer"]
    lines = [
        f"# Redis benchmark ({results['keys']:,} result keys, {results['dataset']['without_ttl']:,} without TTL)",
        "",
        f"{results['date']}, {results['machine']}, Redis {results['redis_version']}, "
        f"hiredis {'yes' if results.get('hiredis') else 'no'}; load average at the end "
        f"{', '.join(f'{v:.1f}' for v in results.get('load_average', ()))} (the machine is shared).",
        "",
        "| method | wall time | keys/s | vs KEYS loop | deleted | archived | TTL set | peak RSS | SLOWLOG entries (max) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, key in (("`KEYS` + per-key `TTL`/`GET`/`DEL`/`EXPIRE`", "keys_loop"), ("`cleanup_results --backend redis`", "enforcer")):
        r = e[key]
        lines.append(
            f"| {label} | {r['seconds']:.1f} s | {r['keys'] / r['seconds']:,.0f} | "
            f"{e['keys_loop']['seconds'] / r['seconds']:.2f}x | {r['deleted']:,} | {r.get('archived', 0):,} | "
            f"{r['ttl_set']:,} | {r['peak_rss_mb']:.0f} MB | {r['slowlog_entries']} ({r['slowlog_max_ms']:.1f} ms) |"
        )
    if "enforcer_again" in e:
        a, b = e["keys_loop_again"], e["enforcer_again"]
        lines += [
            "",
            f"Second pass of each over what its first pass left (steady state: nothing due, TTLs right): "
            f"KEYS loop {a['seconds']:.1f} s for {a['keys']:,} keys ({a['keys'] / a['seconds']:,.0f} keys/s, "
            f"{a['slowlog_entries']} SLOWLOG entries, max {a['slowlog_max_ms']:.1f} ms); "
            f"enforcer {b['seconds']:.1f} s for {b['keys']:,} keys ({b['keys'] / b['seconds']:,.0f} keys/s, "
            f"{b['deleted']:,} deleted, {b['ttl_set']:,} TTLs set, {b['slowlog_entries']} SLOWLOG entries): "
            f"{(b['keys'] / b['seconds']) / (a['keys'] / a['seconds']):.2f}x the loop's rate per key.",
        ]
    if "cpu_s" in e["enforcer"] and "redis_cpu_s" in e["enforcer"]:
        lines += ["", "Where the time went (CPU seconds of the method's process, all threads / of the Redis server; Redis's time in the largest commands):", ""]
        for label, key in (("KEYS loop", "keys_loop"), ("enforcer", "enforcer"), ("KEYS loop, second pass", "keys_loop_again"), ("enforcer, second pass", "enforcer_again")):
            r = e.get(key)
            if not r or "cpu_s" not in r:
                continue
            top = ", ".join(f"{name} {sec:.2f} s" for name, sec in list(r.get("redis_command_s", {}).items())[:5])
            lines.append(f"* {label}: {r['seconds']:.1f} s wall; process {r['cpu_s']:.1f} s CPU, Redis {r['redis_cpu_s']:.1f} s CPU ({top})")
        lines += ["", "(enforcer: SCAN walks the keys, MGET reads the values, EVAL the TTLs, EVALSHA makes the guarded changes; a script's inner GET/PTTL/UNLINK are counted again under their own names.)"]
    small = results.get("enforcer_small")
    if small:
        lines += [
            "",
            f"Enforcer peak RSS on {small['keys']:,} keys: {small['peak_rss_mb']:.0f} MB; on "
            f"{e['enforcer']['keys']:,} keys: {e['enforcer']['peak_rss_mb']:.0f} MB.",
        ]
    w = results["write_path"]
    lines += [
        "",
        f"Write path ({w['results_per_backend']:,} results each, {w['rounds']} alternating rounds): "
        f"stock RedisBackend {w['stock_us']:.0f} µs, RetentionRedisBackend {w['retention_us']:.0f} µs per result "
        f"(medians); median ratio of paired rounds **{w['ratio']:.3f}x**"
        + (f" (quartiles {w['ratio_quartiles'][0]:.3f}-{w['ratio_quartiles'][1]:.3f})." if "ratio_quartiles" in w else "."),
    ]
    for key in ("keys_loop", "enforcer"):
        if e[key]["slowlog"]:
            lines += ["", f"Slowest logged commands of {key}:", ""]
            lines += [f"* {s['ms']:.1f} ms `{s['command']}`" for s in e[key]["slowlog"][:5]]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="100k keys, results/redis-quick.*")
    parser.add_argument("--write-results", type=int, default=20_000)
    parser.add_argument("--write-only", action="store_true", help="Measure the write path again; keep the rest of the results file.")
    parser.add_argument("--render-only", action="store_true", help="Rewrite the .md from the .json.")
    parser.add_argument("--child", choices=["keys-loop", "enforcer"], help=argparse.SUPPRESS)
    parser.add_argument("--db", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    check_loopback()
    if args.child:
        fn = child_keys_loop if args.child == "keys-loop" else child_enforcer
        print(json.dumps(fn(args.db)))
        return 0
    keys = 100_000 if args.quick else args.keys
    if args.render_only:
        name = "redis-quick" if args.quick else "redis"
        (RESULTS_DIR / f"{name}.md").write_text(render(json.loads((RESULTS_DIR / f"{name}.json").read_text())))
        return 0
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    SQLITE.unlink(missing_ok=True)
    shutil.rmtree(ARCHIVE_DIR, ignore_errors=True)
    ARCHIVE_DIR.mkdir(parents=True)
    os.environ.update(django_child_env())
    setup_django()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    setup_policies()
    import redis

    server = redis.Redis.from_url(url(LOOP_DB))
    results: dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "redis_version": server.info("server")["redis_version"],
        "keys": keys,
    }
    print(f"write path: {args.write_results} results per backend ...", flush=True)
    results["write_path"] = write_path(args.write_results)
    print(f"  ratio {results['write_path']['ratio']:.3f}", flush=True)
    name = "redis-quick" if args.quick else "redis"
    if args.write_only:
        previous = json.loads((RESULTS_DIR / f"{name}.json").read_text())
        previous["write_path"] = results["write_path"]
        previous["write_path_date"] = results["date"]
        (RESULTS_DIR / f"{name}.json").write_text(json.dumps(round_floats(previous), indent=2) + "\n")
        (RESULTS_DIR / f"{name}.md").write_text(render(previous))
        print(render(previous))
        return 0
    small = max(1, keys // 10)
    print(f"populating {small:,} keys (db {SMALL_DB}) ...", flush=True)
    populate(SMALL_DB, small)
    results["enforcer_small"] = run_child("enforcer", SMALL_DB)
    redis.Redis.from_url(url(SMALL_DB)).flushdb()
    results["enforcer_small"].pop("report", None)
    print(f"  enforcer on {small:,}: {results['enforcer_small']['seconds']:.1f} s", flush=True)
    print(f"populating {keys:,} keys twice (db {LOOP_DB}, {ENFORCER_DB}) ...", flush=True)
    results["dataset"] = populate(LOOP_DB, keys)
    populate(ENFORCER_DB, keys)
    enforcer: dict[str, Any] = {}
    print("KEYS loop ...", flush=True)
    enforcer["keys_loop"] = run_child("keys-loop", LOOP_DB)
    print(f"  {enforcer['keys_loop']['seconds']:.1f} s", flush=True)
    print("enforcer ...", flush=True)
    enforcer["enforcer"] = run_child("enforcer", ENFORCER_DB)
    print(f"  {enforcer['enforcer']['seconds']:.1f} s", flush=True)
    enforcer["speedup"] = enforcer["keys_loop"]["seconds"] / enforcer["enforcer"]["seconds"]
    # A second pass of each over what its first pass left: the steady state, where
    # results were written with the right TTLs and little is left to change.
    print("second passes ...", flush=True)
    enforcer["keys_loop_again"] = run_child("keys-loop", LOOP_DB)
    enforcer["enforcer_again"] = run_child("enforcer", ENFORCER_DB)
    enforcer["enforcer_again"].pop("report", None)
    results["enforcer"] = enforcer
    results["hiredis"] = _hiredis()
    results["load_average"] = os.getloadavg()
    for db in (LOOP_DB, ENFORCER_DB):
        redis.Redis.from_url(url(db)).flushdb()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(round_floats(results), indent=2) + "\n")
    (RESULTS_DIR / f"{name}.md").write_text(render(results))
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
