"""Run one cleanup method in this process and measure it (run as a child process).

Methods:
  raw      DELETE FROM django_celery_results_taskresult WHERE date_done < now - result_expires
  stock    TaskResult.objects.delete_expired(result_expires)   (django-celery-results)
  cleanup  call_command("cleanup_results", "--no-progress", "--json", ...)

Every SQL statement goes through a ``connection.execute_wrapper`` that times it;
``set_autocommit(False)`` (how ``transaction.atomic`` opens a transaction) and
``commit()``/``rollback()`` of this process's connection are wrapped so that a
transaction is timed from its start to the end of its commit. A statement run
outside ``atomic`` is a transaction of its own (autocommit). Nothing in
retention_admin is patched.

Usage (with DATABASE_URL set, see common.django_env):
    python benchmarks/driver.py METHOD --out FILE [-- extra cleanup_results args]
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import TABLE, peak_rss_mb, percentile, rss_mb, setup_django  # noqa: E402

WRITES = {"DELETE", "UPDATE", "INSERT"}


def statement_kind(sql: str) -> str:
    """SELECT, DELETE, ...; a ``WITH`` statement counts as the first write it contains."""
    words = sql.lstrip().split(None, 1)
    kind = words[0].upper() if words else "?"
    if kind == "WITH":
        write = re.search(r"\b(DELETE|UPDATE|INSERT)\b", sql, re.IGNORECASE)
        kind = write.group(1).upper() if write else "SELECT"
    return kind


class TransactionTracker:
    """Times statements and transactions on one Django connection."""

    def __init__(self, connection: Any):
        self.connection = connection
        self.open_since: float | None = None
        self.open_statements: list[tuple[str, float, int, str]] = []
        self.transactions: list[dict[str, Any]] = []
        self.statements: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
        self.deleted = 0
        self.slowest_statement: dict[str, Any] | None = None

        set_autocommit = connection.set_autocommit
        commit = connection.commit
        rollback = connection.rollback

        def tracked_set_autocommit(autocommit: bool, *args: Any, **kwargs: Any) -> Any:
            if not autocommit and self.open_since is None:
                self.open_since = time.perf_counter()
                self.open_statements = []
            return set_autocommit(autocommit, *args, **kwargs)

        def tracked_commit() -> Any:
            try:
                return commit()
            finally:
                self._close("commit")

        def tracked_rollback() -> Any:
            try:
                return rollback()
            finally:
                self._close("rollback")

        connection.set_autocommit = tracked_set_autocommit
        connection.commit = tracked_commit
        connection.rollback = tracked_rollback

    def _close(self, end: str) -> None:
        if self.open_since is None:
            return
        self._record(time.perf_counter() - self.open_since, self.open_statements, end)
        self.open_since = None
        self.open_statements = []

    def _record(self, seconds: float, statements: list[tuple[str, float, int, str]], end: str) -> None:
        self.transactions.append({
            "seconds": seconds,
            "write": any(kind in WRITES for kind, *_ in statements),
            "end": end,
            "statements": statements,
        })

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            seconds = time.perf_counter() - started
            kind = statement_kind(sql)
            try:
                rowcount = int(context["cursor"].rowcount)
            except Exception:  # noqa: BLE001 - a closed cursor has no rowcount
                rowcount = -1
            if kind == "DELETE" and TABLE in sql[:80] and rowcount > 0:
                self.deleted += rowcount
            stats = self.statements[kind]
            stats[0] += 1
            stats[1] += seconds
            stats[2] = max(stats[2], seconds)
            statement = (kind, seconds, rowcount, sql[:300])
            if self.slowest_statement is None or seconds > self.slowest_statement["seconds"]:
                self.slowest_statement = {"kind": kind, "seconds": seconds, "rows": rowcount, "sql": sql[:300]}
            if self.open_since is not None or self.connection.in_atomic_block:
                self.open_statements.append(statement)
            else:
                self._record(seconds, [statement], "autocommit")

    def summary(self) -> dict[str, Any]:
        durations = sorted(t["seconds"] for t in self.transactions)
        writes = sorted(t["seconds"] for t in self.transactions if t["write"])
        deletes = [t for t in self.transactions if any(k == "DELETE" for k, *_ in t["statements"])]
        longest = sorted(self.transactions, key=lambda t: t["seconds"], reverse=True)[:5]
        return {
            "count": len(durations),
            "write_count": len(writes),
            "delete_count": len(deletes),
            "longest_s": durations[-1] if durations else None,
            "longest_write_s": writes[-1] if writes else None,
            "p50_s": percentile(durations, 0.50),
            "p99_s": percentile(durations, 0.99),
            "delete_p50_s": percentile(sorted(t["seconds"] for t in deletes), 0.50),
            "delete_p99_s": percentile(sorted(t["seconds"] for t in deletes), 0.99),
            "over_250ms": sum(1 for d in durations if d > 0.25),
            "writes_over_250ms": sum(1 for d in writes if d > 0.25),
            "longest": [
                {
                    "seconds": t["seconds"],
                    "end": t["end"],
                    "statements": [
                        {"kind": k, "seconds": s, "rows": r, "sql": q} for k, s, r, q in t["statements"][:6]
                    ],
                }
                for t in longest
            ],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method", choices=["raw", "stock", "cleanup"])
    parser.add_argument("--out", required=True)
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    args.extra = extra

    setup_django()
    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone
    from django_celery_results.models import TaskResult

    from testproject.celery import app

    connection.ensure_connection()
    expires = app.conf.result_expires
    tracker = TransactionTracker(connection)
    setup_rss = rss_mb()
    report: dict[str, Any] | None = None
    with connection.execute_wrapper(tracker):
        wall_start = time.time()
        started = time.perf_counter()
        if args.method == "raw":
            with connection.cursor() as cursor:
                cursor.execute(f"DELETE FROM {TABLE} WHERE date_done < %s", [timezone.now() - expires])
        elif args.method == "stock":
            TaskResult.objects.delete_expired(expires)
        else:
            out = io.StringIO()
            call_command("cleanup_results", "--no-progress", "--json", *args.extra, stdout=out)
            report = json.loads(out.getvalue())
        seconds = time.perf_counter() - started
        wall_end = time.time()
    peak = peak_rss_mb()
    # What the method says it deleted: the DELETE statements' row counts, or the
    # command's report. (run.py counts what is really gone, and compares.)
    deleted = report["totals"]["deleted"] if report is not None else tracker.deleted
    result = {
        "method": args.method,
        "extra_args": args.extra,
        "wall_s": seconds,
        "started_at": wall_start,
        "ended_at": wall_end,
        "deleted_reported": deleted,
        "rowcount_deleted": tracker.deleted,
        "setup_rss_mb": setup_rss,
        "peak_rss_mb": peak,
        "transactions": tracker.summary(),
        "statements": {
            kind: {"count": int(c), "total_s": t, "max_s": m} for kind, (c, t, m) in tracker.statements.items()
        },
        "slowest_statement": tracker.slowest_statement,
        "report": report,
    }
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
