"""Cleanup benchmark: raw DELETE vs stock delete_expired() vs cleanup_results.

For each database (PostgreSQL, SQLite) it builds a data set of ``--rows`` TaskResult
rows with ~1 KB results, ``--due`` of them due under the seeded policies, plus a
second one with ``--small-due`` due rows (to see whether memory grows with the
due count). Then, on a fresh clone of the data for each run, in a separate process:

* ``raw``     DELETE FROM django_celery_results_taskresult WHERE date_done < cutoff
* ``stock``   TaskResult.objects.delete_expired() (django-celery-results)
* ``cleanup`` the cleanup_results management command

while a second process stores results through the real Celery backend and records
each call's latency (after an idle baseline with the writer alone). It reports wall
time, rows/s, the ratio to stock, the longest transaction, peak RSS and the writer's
p50/p99/failures, checks that every method left the very same rows, and writes
benchmarks/results/cleanup.json and cleanup.md (``--quick``: cleanup-quick.*).

    make bench                              # 2M rows, 1M due, both databases
    make bench ARGS="--quick"               # 100k rows, 50k due: a smoke run
    make bench ARGS="--db sqlite --batch-size 5000"
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import databases  # noqa: E402
import render  # noqa: E402
from common import (  # noqa: E402
    BENCH_DIR,
    RESULTS_DIR,
    ROOT,
    VAR_DIR,
    django_env,
    percentile,
    round_floats,
)

PYTHON = sys.executable
METHODS = ("raw", "stock", "cleanup")
MAX_REUSE_AGE_S = 3 * 3600  # kept rows are generated >= 6 h younger than result_expires
TARGETS = {
    "throughput_ratio_min": 0.9,
    "longest_transaction_s_max": 0.25,
    "peak_rss_mb_max": 150.0,
    "rss_growth_max": 1.2,
    "writer_failures_max": 0,
    "writer_p99_vs_idle_max": 2.0,
}


def log(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", flush=True)


# -- child processes -------------------------------------------------------------
def migrate(url: str) -> None:
    subprocess.run(
        [PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT, env=django_env(url), check=True,
    )


def generate(url: str, rows: int, due: int, seed: int) -> dict[str, Any]:
    out = subprocess.run(
        [PYTHON, str(BENCH_DIR / "dataset.py"), "--rows", str(rows), "--due", str(due), "--seed", str(seed)],
        cwd=ROOT, env=django_env(url), check=True, stdout=subprocess.PIPE, text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


class Writer:
    """The concurrent writer process (benchmarks/writer.py)."""

    def __init__(self, url: str, label: str, rate: float, workdir: Path):
        self.out = workdir / f"writer-{label}.json"
        self.ready = workdir / f"writer-{label}.ready"
        self.stop_file = workdir / f"writer-{label}.stop"
        for path in (self.out, self.ready, self.stop_file):
            path.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [PYTHON, str(BENCH_DIR / "writer.py"), "--label", label, "--rate", str(rate),
             "--out", str(self.out), "--ready", str(self.ready), "--stop", str(self.stop_file)],
            cwd=ROOT, env=django_env(url),
        )

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"the writer exited early (status {self.process.returncode})")
            if time.monotonic() > deadline:
                raise RuntimeError("the writer did not get ready")
            time.sleep(0.05)

    def stop(self) -> dict[str, Any]:
        self.stop_file.touch()
        self.process.wait(timeout=120)
        if self.process.returncode:
            raise RuntimeError(f"the writer failed (status {self.process.returncode})")
        return json.loads(self.out.read_text())


def writer_stats(data: dict[str, Any], window: tuple[float, float] | None = None) -> dict[str, Any]:
    samples = [
        s for s in data["samples"] if window is None or window[0] <= s[0] <= window[1]
    ]
    latencies = sorted(s[1] for s in samples)
    errors: dict[str, int] = {}
    for _wall, _latency, error in samples:
        if error:
            errors[error] = errors.get(error, 0) + 1
    return {
        "calls": len(samples),
        "failures": sum(errors.values()),
        "p50_ms": _ms(percentile(latencies, 0.50)),
        "p99_ms": _ms(percentile(latencies, 0.99)),
        "max_ms": _ms(latencies[-1] if latencies else None),
        "errors": dict(sorted(errors.items(), key=lambda e: -e[1])[:5]),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def cleanup_args(args: argparse.Namespace) -> list[str]:
    extra = []
    if args.batch_size:
        extra += ["--batch-size", str(args.batch_size)]
    if args.sleep is not None:
        extra += ["--sleep", str(args.sleep)]
    return extra


def run_driver(url: str, method: str, extra: list[str], workdir: Path) -> dict[str, Any]:
    out = workdir / f"driver-{method}.json"
    out.unlink(missing_ok=True)
    command = [PYTHON, str(BENCH_DIR / "driver.py"), method, "--out", str(out)]
    if extra:
        command += ["--", *extra]
    subprocess.run(command, cwd=ROOT, env=django_env(url), check=True, timeout=3 * 3600)
    return json.loads(out.read_text())


# -- one database -----------------------------------------------------------------
def build_templates(db: Any, datasets: list[dict[str, Any]], args: argparse.Namespace) -> None:
    base_ready = False
    for dataset in datasets:
        name = f"tpl_{dataset['label']}"
        marker = VAR_DIR / f"{db.kind}-{name}.json"
        params = {"rows": dataset["rows"], "due": dataset["due"], "seed": args.seed}
        if args.reuse_data and marker.exists() and db.exists(name):
            saved = json.loads(marker.read_text())
            age = time.time() - datetime.fromisoformat(saved["summary"]["generated_at"]).timestamp()
            if saved["params"] == params and age < MAX_REUSE_AGE_S:
                log(f"{db.kind}: reusing {name} ({age / 60:.0f} min old)")
                dataset.update(saved["summary"], size_bytes=saved["size_bytes"])
                continue
        if not base_ready:
            log(f"{db.kind}: creating and migrating an empty database")
            db.create_empty("empty")
            migrate(db.url("empty"))
            base_ready = True
        check_disk(dataset["rows"])
        log(f"{db.kind}: generating {name}: {dataset['rows']:,} rows, {dataset['due']:,} due")
        marker.unlink(missing_ok=True)
        db.clone("empty", name)
        started = time.monotonic()
        summary = generate(db.url(name), dataset["rows"], dataset["due"], args.seed)
        db.finalize(name)
        summary["prepare_seconds"] = round(time.monotonic() - started, 1)
        size = db.table_size_bytes(name)
        dataset.update(summary, size_bytes=size)
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"params": params, "summary": summary, "size_bytes": size}))
        log(f"{db.kind}: {name} ready in {summary['prepare_seconds']} s, table {size / 2**30:.2f} GiB")
    if base_ready:
        db.drop("empty")


def check_disk(rows: int) -> None:
    # ~1.8 KB a row with indexes; a template, a clone and the other template at once.
    need = rows * 1800 * 3
    free = shutil.disk_usage(VAR_DIR if VAR_DIR.exists() else ROOT).free
    if free < need:
        raise SystemExit(f"not enough disk space: {free / 2**30:.1f} GiB free, need ~{need / 2**30:.1f} GiB")


def measure(db: Any, template: str, label: str, method: str | None, args: argparse.Namespace,
            workdir: Path, rows: int = 0) -> dict[str, Any]:
    """One run on a fresh clone: the writer alone (method None) or with a method."""
    db.clone(template, "run")
    db.settle("run")
    load = os.getloadavg()[0]  # other work on the machine skews the numbers: recorded
    writer = Writer(db.url("run"), label, args.writer_rate, workdir)
    try:
        writer.wait_ready()
        if method is None:
            time.sleep(args.idle_seconds)
            result: dict[str, Any] = {"method": "idle"}
            window = None
        else:
            extra = cleanup_args(args) if method == "cleanup" else []
            result = run_driver(db.url("run"), method, extra, workdir)
            window = (result["started_at"], result["ended_at"])
    finally:
        data = writer.stop()
    result["writer"] = writer_stats(data, window)
    result["writer"]["backend"] = data["backend"]
    result["writer"]["rate"] = data["rate"]
    result["writer_stored_total"] = data["stored"]
    result["after"] = db.verify("run")
    if method is not None:
        # Deleted = generated rows that are gone, counted in the database afterwards.
        result["deleted"] = rows - result["after"]["remaining"]
        result["rows_per_s"] = result["deleted"] / result["wall_s"] if result["wall_s"] else None
    result["loadavg_1m_before"] = load
    db.drop("run")
    return result


def bench_database(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    db = databases.get(kind)
    started = time.monotonic()
    code = code_info()
    datasets = [{"label": "main", "rows": args.rows, "due": args.due}]
    if args.small_due and args.small_due < args.due:
        datasets.insert(0, {
            "label": "small", "rows": args.rows - args.due + args.small_due, "due": args.small_due,
        })
    build_templates(db, datasets, args)
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{kind}-"))
    try:
        log(f"{kind}: idle baseline, writer alone for {args.idle_seconds} s")
        idle = measure(db, "tpl_main", "idle", None, args, workdir)
        log(f"{kind}: idle writer p50 {idle['writer']['p50_ms']:.2f} ms, p99 {idle['writer']['p99_ms']:.2f} ms")
        runs = []
        for dataset in datasets:
            for method in args.methods:
                log(f"{kind}: {method} on {dataset['label']} ({dataset['due']:,} due of {dataset['rows']:,})")
                run = measure(db, f"tpl_{dataset['label']}", f"{dataset['label']}-{method}", method, args,
                              workdir, rows=dataset["rows"])
                run["dataset"] = dataset["label"]
                run["due"] = dataset["due"]
                run["rows"] = dataset["rows"]
                w = run["writer"]
                log(
                    f"{kind}: {method}: deleted {run['deleted']:,} in {run['wall_s']:.2f} s "
                    f"({run['rows_per_s']:,.0f} rows/s), longest tx "
                    f"{run['transactions']['longest_s'] * 1000:.0f} ms, peak RSS {run['peak_rss_mb']:.0f} MB, "
                    f"writer p99 {w['p99_ms'] or 0:.1f} ms, {w['failures']} failures; "
                    f"{run['after']['remaining']:,} rows left"
                )
                runs.append(run)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        db.drop("run")
        if not args.keep_data:
            for dataset in datasets:
                db.drop(f"tpl_{dataset['label']}")
                (VAR_DIR / f"{db.kind}-tpl_{dataset['label']}.json").unlink(missing_ok=True)
    for run in runs:
        stock = next((r for r in runs if r["dataset"] == run["dataset"] and r["method"] == "stock"), None)
        run["ratio_to_stock"] = (
            run["rows_per_s"] / stock["rows_per_s"] if stock and stock["rows_per_s"] else None
        )
        idle_p99 = idle["writer"]["p99_ms"]
        run["writer"]["p99_vs_idle"] = (
            run["writer"]["p99_ms"] / idle_p99 if idle_p99 and run["writer"]["p99_ms"] is not None else None
        )
    return {
        "database": kind,
        "version": db.version(),
        "server_settings": db.settings(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "code": code,
        "cores": os.cpu_count(),
        "code_after": code_info(),
        "params": {
            "rows": args.rows, "due": args.due, "small_due": args.small_due, "seed": args.seed,
            "batch_size": args.batch_size, "sleep": args.sleep, "writer_rate": args.writer_rate,
            "idle_seconds": args.idle_seconds, "methods": list(args.methods),
        },
        "datasets": datasets,
        "idle": idle,
        "runs": runs,
        "consistency": consistency(datasets, runs),
        "targets": evaluate(idle, runs),
        "total_seconds": round(time.monotonic() - started, 1),
    }


def consistency(datasets: list[dict[str, Any]], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Did every method delete exactly the due rows, the same ones, and keep the writer's?"""
    problems = []
    for dataset in datasets:
        mine = [r for r in runs if r["dataset"] == dataset["label"]]
        fingerprints = {(r["after"]["remaining"], r["after"]["remaining_id_sum"]) for r in mine}
        if len(fingerprints) > 1:
            problems.append(f"{dataset['label']}: methods left different rows: {sorted(fingerprints)}")
        for r in mine:
            expected = dataset["rows"] - dataset["due"]
            if r["after"]["remaining"] != expected:
                problems.append(f"{dataset['label']}/{r['method']}: {r['after']['remaining']} left, expected {expected}")
            if r["deleted"] != dataset["due"]:
                problems.append(f"{dataset['label']}/{r['method']}: deleted {r['deleted']}, expected {dataset['due']}")
            if r["deleted_reported"] != r["deleted"]:
                problems.append(
                    f"{dataset['label']}/{r['method']}: reported {r['deleted_reported']} deleted, "
                    f"{r['deleted']} are gone"
                )
            if r["after"]["still_due"]:
                problems.append(f"{dataset['label']}/{r['method']}: {r['after']['still_due']} due rows left")
            if r["after"]["writer_rows"] != r["writer_stored_total"]:
                problems.append(
                    f"{dataset['label']}/{r['method']}: writer stored {r['writer_stored_total']}, "
                    f"{r['after']['writer_rows']} are left"
                )
    return {"ok": not problems, "problems": problems}


def evaluate(idle: dict[str, Any], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, for cleanup_results; worst case over the data sets."""
    mine = [r for r in runs if r["method"] == "cleanup"]
    main = next((r for r in mine if r["dataset"] == "main"), None)
    small = next((r for r in mine if r["dataset"] == "small"), None)
    if main is None:
        return []
    targets = []

    def add(name: str, measured: str, met: bool | None, detail: str = "") -> None:
        targets.append({"target": name, "measured": measured, "met": met, "detail": detail})

    ratio = main.get("ratio_to_stock")
    add(
        f"throughput >= {TARGETS['throughput_ratio_min']}x stock",
        f"{ratio:.2f}x" if ratio is not None else "n/a (stock not run)",
        None if ratio is None else ratio >= TARGETS["throughput_ratio_min"],
        f"{main['rows_per_s']:,.0f} rows/s on {main['due']:,} due rows",
    )
    longest = max(r["transactions"]["longest_s"] for r in mine)
    over = sum(r["transactions"]["over_250ms"] for r in mine)
    add(
        f"no transaction over {TARGETS['longest_transaction_s_max'] * 1000:.0f} ms",
        f"longest {longest * 1000:.0f} ms",
        longest <= TARGETS["longest_transaction_s_max"],
        f"{over} of {sum(r['transactions']['count'] for r in mine)} transactions over 250 ms; "
        f"longest write transaction {max(r['transactions']['longest_write_s'] or 0 for r in mine) * 1000:.0f} ms",
    )
    peak = max(r["peak_rss_mb"] for r in mine)
    add(
        f"peak RSS < {TARGETS['peak_rss_mb_max']:.0f} MB",
        f"{peak:.0f} MB",
        peak < TARGETS["peak_rss_mb_max"],
    )
    if small is not None:
        growth = main["peak_rss_mb"] / small["peak_rss_mb"]
        add(
            f"RSS <= {TARGETS['rss_growth_max']}x from {small['due']:,} to {main['due']:,} due",
            f"{growth:.2f}x",
            growth <= TARGETS["rss_growth_max"],
            f"{small['peak_rss_mb']:.0f} MB -> {main['peak_rss_mb']:.0f} MB",
        )
    failures = sum(r["writer"]["failures"] for r in mine)
    add("zero writer failures", str(failures), failures == 0,
        f"{sum(r['writer']['calls'] for r in mine)} writer calls during cleanup_results")
    worst = max(mine, key=lambda r: r["writer"]["p99_vs_idle"] or 0)
    vs_idle = worst["writer"]["p99_vs_idle"]
    add(
        f"writer p99 <= {TARGETS['writer_p99_vs_idle_max']:.0f}x idle",
        f"{vs_idle:.2f}x" if vs_idle is not None else "n/a",
        None if vs_idle is None else vs_idle <= TARGETS["writer_p99_vs_idle_max"],
        f"p99 {worst['writer']['p99_ms']:.1f} ms ({worst['dataset']}) vs idle {idle['writer']['p99_ms']:.1f} ms",
    )
    return targets


# -- machine and output -------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    meminfo = Path("/proc/meminfo").read_text().split("\n")
    total_kb = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal:"))
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().split("\n")
         if line.startswith("model name")),
        platform.processor(),
    )
    from importlib.metadata import version

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(total_kb / 2**20, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "packages": {p: version(p) for p in ("Django", "celery", "django-celery-results", "psycopg")},
    }


def code_info() -> dict[str, Any]:
    """Which retention_admin was measured (it may change between two databases' runs)."""

    def git(*argv: str) -> str:
        try:
            return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        except OSError:
            return ""

    digest = hashlib.sha1()
    for path in sorted((ROOT / "retention_admin").rglob("*.py")):
        digest.update(path.read_bytes())
    return {
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted_changes": bool(git("status", "--porcelain", "retention_admin")),
        "retention_admin_sha1": digest.hexdigest()[:12],
    }


def write_results(name: str, results: dict[str, Any]) -> tuple[Path, Path]:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS_DIR / f"{name}.json"
    md_path = RESULTS_DIR / f"{name}.md"
    merged: dict[str, Any] = {"databases": {}}
    if json_path.exists():
        try:
            merged = json.loads(json_path.read_text())
        except ValueError:
            pass
    merged["machine"] = results["machine"]
    merged["targets"] = TARGETS
    merged.setdefault("databases", {}).update(results["databases"])
    merged["databases"] = {k: merged["databases"][k] for k in ("postgresql", "sqlite") if k in merged["databases"]}
    merged = round_floats(merged, 6)
    json_path.write_text(json.dumps(merged, indent=1) + "\n")
    md_path.write_text(render.markdown(merged))
    return json_path, md_path


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark cleanup_results against a raw DELETE and stock delete_expired().",
        epilog="Results: benchmarks/results/<output>.json and .md (merged per database).",
    )
    parser.add_argument("--db", choices=["postgresql", "sqlite", "all"], default="all")
    parser.add_argument("--rows", type=int, help="rows in the main data set (default 2,000,000)")
    parser.add_argument("--due", type=int, help="due rows in the main data set (default 1,000,000)")
    parser.add_argument("--small-due", type=int,
                        help="due rows in the second data set, for the memory comparison "
                             "(default 100,000; 0 skips it)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 100k rows, 50k due, 5k small, 5 s idle baseline")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated subset of raw,stock,cleanup")
    parser.add_argument("--batch-size", type=int, help="pass --batch-size to cleanup_results")
    parser.add_argument("--sleep", type=float, help="pass --sleep SECONDS to cleanup_results")
    parser.add_argument("--writer-rate", type=float, default=50.0, help="writer calls per second")
    parser.add_argument("--idle-seconds", type=float, help="idle baseline length (default 20; quick 5)")
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--output", help="results file name (default cleanup; quick: cleanup-quick)")
    parser.add_argument("--keep-data", action="store_true",
                        help="keep the generated template databases (var/bench, retention_bench_*)")
    parser.add_argument("--reuse-data", action="store_true",
                        help="reuse templates kept by --keep-data if their parameters match")
    parser.add_argument("--render-only", action="store_true",
                        help="only re-render the markdown from the JSON results")
    args = parser.parse_args(argv)
    quick = args.quick
    args.rows = args.rows if args.rows is not None else (100_000 if quick else 2_000_000)
    args.due = args.due if args.due is not None else (50_000 if quick else 1_000_000)
    if args.small_due is None:
        args.small_due = 5_000 if quick else 100_000
    args.idle_seconds = args.idle_seconds if args.idle_seconds is not None else (5.0 if quick else 20.0)
    args.output = args.output or ("cleanup-quick" if quick else "cleanup")
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if unknown := set(args.methods) - set(METHODS):
        parser.error(f"unknown methods: {', '.join(sorted(unknown))}")
    if not 0 < args.due <= args.rows:
        parser.error("--due must be more than 0 and at most --rows")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.render_only:
        json_path = RESULTS_DIR / f"{args.output}.json"
        md_path = RESULTS_DIR / f"{args.output}.md"
        md_path.write_text(render.markdown(json.loads(json_path.read_text())))
        print(md_path)
        return 0
    kinds = ["postgresql", "sqlite"] if args.db == "all" else [args.db]
    results: dict[str, Any] = {"machine": machine_info(), "databases": {}}
    started = time.monotonic()
    for kind in kinds:
        results["databases"][kind] = bench_database(kind, args)
    json_path, md_path = write_results(args.output, results)
    log(f"done in {time.monotonic() - started:.0f} s: {json_path.relative_to(ROOT)}, {md_path.relative_to(ROOT)}")
    print()
    print(md_path.read_text())
    failed = [
        k for k, r in results["databases"].items() if not r["consistency"]["ok"]
    ]
    if failed:
        log(f"inconsistent results on {', '.join(failed)}: see 'consistency' in the JSON")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
