"""Archive benchmark: archive-then-delete and restore, vs the usual hand-written script.

On PostgreSQL it builds two data sets with ~1 KB results (``--due`` due rows, and
one tenth of that, to see whether memory grows with the due count), governed by
one archive policy keeping 1 day. On a fresh clone of each, in separate processes:

* ``script``  the common "query all old rows, write JSON lines, delete" script:
              ``TaskResult.objects.filter(date_done__lt=cutoff).values()`` written
              to a gzip JSON Lines file, then ``.delete()`` on the same queryset;
* ``archive`` ``cleanup_results --policy bench-archive`` (archive, verify-by-size,
              record, delete in short transactions);
* ``restore`` ``restore_results`` of every batch ``archive`` wrote.

Reported: wall time, rows/s, peak RSS per process, archive bytes. Results go to
benchmarks/results/archive.json and archive.md.

    make bench-archive                       # 1M due (and 100k)
    make bench-archive ARGS="--due 50000"    # a smoke run

A/B of two source trees on one data set, interleaved (each run on a fresh clone;
the machine is shared, so compare ratios within a round, not absolute numbers):

    python benchmarks/archive.py ab --due 100000 --rounds 3 --tree base=/tmp/base --tree new=.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import databases  # noqa: E402
from common import BENCH_DIR, RESULTS_DIR, ROOT, VAR_DIR, django_env, peak_rss_mb, round_floats, setup_django  # noqa: E402

PYTHON = sys.executable
POLICY = "bench-archive"
TARGET_ROWS_PER_S = 25_000
TARGET_RSS_MB = 150.0


def log(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", flush=True)


# -- the child process: one method, measured in-process -----------------------
def child(method: str, workdir: Path, out: Path) -> None:
    setup_django()
    from datetime import timedelta

    from django.core.management import call_command
    from django.db import connection
    from django_celery_results.models import TaskResult

    from retention_admin.models import ArchiveBatch, RetentionPolicy, RetentionTier

    if method != "restore":
        RetentionPolicy.objects.update(enabled=False)
        RetentionPolicy.objects.update_or_create(
            name=POLICY,
            defaults={"tier": RetentionTier.objects.get(slug="daily"), "priority": 1, "keep_for": timedelta(days=1),
                      "archive": True, "enabled": True, "task_name_pattern": ""},
        )
    before = TaskResult.objects.count()
    connection.close()
    started = time.monotonic()
    detail: dict[str, Any] = {}
    if method == "script":
        detail = naive_script(workdir / "script.jsonl.gz")
    elif method == "archive":
        from io import StringIO

        buffer = StringIO()
        call_command("cleanup_results", "--policy", POLICY, "--json", "--no-progress", stdout=buffer)
        report = json.loads(buffer.getvalue())
        detail = {"archived": report["totals"]["archived"], "deleted": report["totals"]["deleted"]}
    elif method == "restore":
        from io import StringIO

        ids = [str(pk) for pk in ArchiveBatch.objects.order_by("id").values_list("id", flat=True)]
        buffer = StringIO()
        call_command("restore_results", *ids, "--grace-days", "0", "--json", stdout=buffer)
        detail = {"restored": json.loads(buffer.getvalue())["totals"]["restored"], "batches": len(ids)}
    seconds = time.monotonic() - started
    after = TaskResult.objects.count()
    out.write_text(json.dumps({
        "method": method, "seconds": seconds, "rows_before": before, "rows_after": after,
        "peak_rss_mb": peak_rss_mb(), **detail,
    }))


def naive_script(path: Path) -> dict[str, Any]:
    """What teams write first: load the old rows, dump them, delete them."""
    import gzip
    from datetime import timedelta

    from django.utils import timezone as djtz
    from django_celery_results.models import TaskResult

    old = TaskResult.objects.filter(date_done__lt=djtz.now() - timedelta(days=1))
    written = 0
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        for row in old.values():
            handle.write(json.dumps(row, default=str) + "\n")
            written += 1
    deleted, _ = old.delete()
    return {"archived": written, "deleted": deleted, "archive_bytes": path.stat().st_size}


# -- the parent ---------------------------------------------------------------
def run_child(url: str, method: str, workdir: Path, archive_dir: Path) -> dict[str, Any]:
    out = workdir / f"{method}.json"
    out.unlink(missing_ok=True)
    env = django_env(url)
    env["RETENTION_ADMIN_JSON"] = json.dumps({"ARCHIVE_DIR": str(archive_dir)})
    subprocess.run([PYTHON, __file__, "child", method, "--workdir", str(workdir), "--out", str(out)],
                   cwd=ROOT, env=env, check=True, timeout=4 * 3600)
    result = json.loads(out.read_text())
    rows = result.get("archived") or result.get("restored") or 0
    result["rows_per_s"] = rows / result["seconds"] if result["seconds"] else None
    return result


def bench(db: Any, due: int, label: str, seed: int, workdir: Path) -> dict[str, Any]:
    template = f"arch_{label}"
    rows = due + max(due // 10, 1000)
    log(f"generating {template}: {rows:,} rows, {due:,} due")
    db.create_empty(template)
    subprocess.run([PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=django_env(db.url(template)), check=True)
    subprocess.run([PYTHON, str(BENCH_DIR / "dataset.py"), "--rows", str(rows), "--due", str(due), "--seed", str(seed)],
                   cwd=ROOT, env=django_env(db.url(template)), check=True, stdout=subprocess.DEVNULL)
    db.finalize(template)
    results: dict[str, Any] = {"due": due, "rows": rows}
    for method in ("script", "archive"):
        db.clone(template, "arch_run")
        db.settle("arch_run")
        archive_dir = workdir / f"archive-{label}-{method}"
        shutil.rmtree(archive_dir, ignore_errors=True)
        archive_dir.mkdir(parents=True)
        log(f"{label}: {method}")
        results[method] = run_child(db.url("arch_run"), method, workdir, archive_dir)
        if method == "archive":
            results[method]["archive_bytes"] = sum(p.stat().st_size for p in archive_dir.rglob("*.gz"))
            log(f"{label}: restore")
            results["restore"] = run_child(db.url("arch_run"), "restore", workdir, archive_dir)
        log(f"{label}: {method}: {results[method]['rows_per_s']:,.0f} rows/s, peak RSS {results[method]['peak_rss_mb']:.0f} MB")
        db.drop("arch_run")
        shutil.rmtree(archive_dir, ignore_errors=True)
    db.drop(template)
    return results


def ab(db: Any, due: int, seed: int, rounds: int, trees: list[tuple[str, Path]], reuse: bool) -> dict[str, Any]:
    """Archive ``due`` rows with each tree in turn (order alternating by round); rows/s per run."""
    import statistics

    template, run = f"archab_tpl_{due}", "archab_run"
    rows = due + max(due // 10, 1000)
    if not (reuse and db.exists(template)):
        log(f"generating {template}: {rows:,} rows, {due:,} due")
        db.create_empty(template)
        subprocess.run([PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT,
                       env=django_env(db.url(template)), check=True)
        subprocess.run([PYTHON, str(BENCH_DIR / "dataset.py"), "--rows", str(rows), "--due", str(due), "--seed", str(seed)],
                       cwd=ROOT, env=django_env(db.url(template)), check=True, stdout=subprocess.DEVNULL)
        db.finalize(template)
    workdir = VAR_DIR / "archive-ab"
    workdir.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[float]] = {name: [] for name, _ in trees}
    cpu: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in trees}
    for number in range(rounds):
        order = trees if number % 2 == 0 else trees[::-1]
        for name, tree in order:
            db.clone(template, run)
            db.settle(run)
            archive_dir = workdir / f"archive-{name}"
            shutil.rmtree(archive_dir, ignore_errors=True)
            archive_dir.mkdir(parents=True)
            out = workdir / f"{name}.json"
            out.unlink(missing_ok=True)
            env = django_env(db.url(run))
            env["PYTHONPATH"] = os.pathsep.join([str(tree), env["PYTHONPATH"]])
            env["RETENTION_ADMIN_JSON"] = json.dumps({"ARCHIVE_DIR": str(archive_dir)})
            load = os.getloadavg()[0]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            proc = subprocess.Popen([PYTHON, str(tree / "benchmarks" / "archive.py"), "child", "archive",
                                     "--workdir", str(workdir), "--out", str(out)], cwd=tree, env=env)
            # CPU seconds are steadier than wall time on a shared machine: the
            # child's own, and its database backends' (sampled from /proc).
            backend_ticks: dict[int, int] = {}
            with db._connect() as watcher:
                while proc.poll() is None:
                    pids = [r[0] for r in watcher.execute(
                        "SELECT pid FROM pg_stat_activity WHERE datname = %s", [databases.PREFIX + run])]
                    for pid in pids:
                        try:
                            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                        except OSError:
                            continue
                        backend_ticks[pid] = max(backend_ticks.get(pid, 0), int(fields[11]) + int(fields[12]))
                    time.sleep(0.05)
            if proc.returncode:
                raise SystemExit(f"{name}: the archive child failed ({proc.returncode})")
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            child_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            server_cpu = sum(backend_ticks.values()) / os.sysconf("SC_CLK_TCK")
            log(f"  backends' CPU ticks: {sorted(backend_ticks.values(), reverse=True)}")
            result = json.loads(out.read_text())
            if result["rows_after"] != rows - due or result["archived"] != due:
                raise SystemExit(f"{name}: archived {result['archived']}, left {result['rows_after']} of {rows} rows")
            rate = result["archived"] / result["seconds"]
            runs[name].append(rate)
            cpu[name].append((child_cpu, server_cpu))
            log(f"round {number + 1} {name}: {rate:,.0f} rows/s, peak RSS {result['peak_rss_mb']:.0f} MB, "
                f"CPU s: process {child_cpu:.2f} + backends {server_cpu:.2f}, load {load:.2f}")
            shutil.rmtree(archive_dir, ignore_errors=True)
    db.drop(run)
    first = trees[0][0]
    summary = {name: {"runs": rates, "median": statistics.median(rates),
                      "ratio_to_" + first: statistics.median([r / b for r, b in zip(rates, runs[first])]),
                      "cpu_s": cpu[name],
                      "cpu_s_median": statistics.median([a + b for a, b in cpu[name]])}
               for name, rates in runs.items()}
    for name, item in summary.items():
        log(f"{name}: median {item['median']:,.0f} rows/s, {item['ratio_to_' + first]:.3f}x {first} (paired median); "
            f"median CPU {item['cpu_s_median']:.2f} s (process + backends)")
    return summary


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Archive benchmark",
        "",
        f"PostgreSQL {results['postgresql_version']}, {results['machine']['cores']} cores, "
        f"Python {results['machine']['python']}, {results['finished_at']}. ~1 KB results. "
        "Each method on a fresh clone, in its own process.",
        "",
        "| due rows | method | wall s | rows/s | peak RSS MB | archive MB |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for size in results["sizes"]:
        for method in ("script", "archive", "restore"):
            r = size[method]
            archive_mb = f"{r['archive_bytes'] / 2**20:.0f}" if r.get("archive_bytes") else ""
            lines.append(
                f"| {size['due']:,} | {method} | {r['seconds']:.1f} | {r['rows_per_s']:,.0f} | "
                f"{r['peak_rss_mb']:.0f} | {archive_mb} |"
            )
    lines += ["", "## Targets", ""]
    for target in results["targets"]:
        lines.append(f"- {'met' if target['met'] else 'NOT met'}: {target['name']} — {target['measured']}")
    return "\n".join(lines) + "\n"


def evaluate(sizes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    big, small = sizes[-1], sizes[0]
    ours = big["archive"]
    growth = ours["peak_rss_mb"] / small["archive"]["peak_rss_mb"]
    script_growth = big["script"]["peak_rss_mb"] / small["script"]["peak_rss_mb"]
    return [
        {"name": f"archive-then-delete ≥ {TARGET_ROWS_PER_S:,} rows/s", "met": ours["rows_per_s"] >= TARGET_ROWS_PER_S,
         "measured": f"{ours['rows_per_s']:,.0f} rows/s at {big['due']:,} due"},
        {"name": f"peak RSS < {TARGET_RSS_MB:.0f} MB", "met": ours["peak_rss_mb"] < TARGET_RSS_MB,
         "measured": f"{ours['peak_rss_mb']:.0f} MB"},
        {"name": "memory flat from the small to the large data set (≤ 1.2x)", "met": growth <= 1.2,
         "measured": f"{growth:.2f}x (the script: {script_growth:.2f}x)"},
        {"name": "faster than the script", "met": ours["rows_per_s"] > big["script"]["rows_per_s"],
         "measured": f"{ours['rows_per_s'] / big['script']['rows_per_s']:.2f}x the script's rows/s"},
    ]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    c = sub.add_parser("child")
    c.add_argument("method", choices=["script", "archive", "restore"])
    c.add_argument("--workdir", type=Path, required=True)
    c.add_argument("--out", type=Path, required=True)
    a = sub.add_parser("ab", help="interleaved A/B of source trees on one data set")
    a.add_argument("--tree", action="append", required=True, metavar="NAME=PATH")
    a.add_argument("--rounds", type=int, default=3)
    a.add_argument("--reuse", action="store_true", help="keep the data set built by an earlier ab run")
    a.add_argument("--due", type=int, default=100_000)
    a.add_argument("--seed", type=int, default=7)
    parser.add_argument("--due", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.command == "child":
        child(args.method, args.workdir, args.out)
        return 0
    db = databases.get("postgresql")
    if args.command == "ab":
        trees = [(name, Path(path).resolve()) for name, path in (t.split("=", 1) for t in args.tree)]
        summary = ab(db, args.due, args.seed, args.rounds, trees, args.reuse)
        (VAR_DIR / "archive-ab" / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return 0
    workdir = VAR_DIR / "archive"
    workdir.mkdir(parents=True, exist_ok=True)
    sizes = [bench(db, max(args.due // 10, 1000), "small", args.seed, workdir),
             bench(db, args.due, "large", args.seed, workdir)]
    results = round_floats({
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "postgresql_version": db.version(),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()[0]},
        "sizes": sizes,
        "targets": evaluate(sizes),
    })
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    name = "archive" if args.due >= 1_000_000 else "archive-quick"
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS_DIR / f"{name}.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
