"""Fill a migrated, empty database with TaskResult rows (run as a child process).

The rows look like a result store after a backlog built up, as the seeded
policies see it: ``failures-7d`` (FAILURE kept 7 days) and, for everything else,
Celery's ``result_expires`` (1 day by default).

* due:  ~90% SUCCESS from 1 day + 2 h to 30 days old, ~10% FAILURE older than
  7 days + 2 h (only failures that old, so that every method deletes the very
  same rows: stock ``delete_expired`` would also delete failures 1-7 days old,
  which ``failures-7d`` keeps);
* kept: recent results (5 min to 18 h old), 96% SUCCESS, 4% FAILURE.

The 2 h and 6 h margins leave room for the time between generating and cleaning.
Rows are inserted in ``date_done`` order (ids grow with time, as in a real store);
``result`` is about 1 KB of JSON, failures also carry a ~600 byte traceback.

Usage (with DATABASE_URL set, see common.django_env):
    python benchmarks/dataset.py --rows N --due D [--seed S]
Prints one JSON object describing what was generated.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import TABLE, setup_django  # noqa: E402

COLUMNS = (
    "task_id", "periodic_task_name", "task_name", "task_args", "task_kwargs", "status",
    "worker", "content_type", "content_encoding", "result", "date_created", "date_started",
    "date_done", "traceback", "meta",
)
TASK_NAMES = (
    "shop.tasks.send_receipt", "shop.tasks.charge_card", "reports.tasks.build_daily",
    "reports.tasks.export_csv", "mail.tasks.deliver", "search.tasks.reindex_document",
    "media.tasks.make_thumbnail", "sync.tasks.pull_inventory", "billing.tasks.invoice",
    "notifications.tasks.push",
)
WORKERS = tuple(f"celery@worker-{n}" for n in range(1, 9))
OLDEST = timedelta(days=30)
DUE_NEWEST = timedelta(days=1, hours=2)  # result_expires (1 day) + margin
FAILURE_NEWEST = timedelta(days=7, hours=2)  # failures-7d + margin
KEPT_OLDEST = timedelta(hours=18)  # result_expires - 6 h margin
KEPT_NEWEST = timedelta(minutes=5)
DUE_FAILURE_SHARE = 0.10
KEPT_FAILURE_SHARE = 0.04
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/srv/app/venv/lib/python3.11/site-packages/celery/app/trace.py", line 477, in trace_task\n'
    "    R = retval = fun(*args, **kwargs)\n"
    '  File "/srv/app/venv/lib/python3.11/site-packages/celery/app/trace.py", line 760, in __protected_call__\n'
    "    return self.run(*args, **kwargs)\n"
    '  File "/srv/app/src/shop/tasks.py", line 118, in charge_card\n'
    "    response = gateway.charge(order.total, token=order.payment_token)\n"
    '  File "/srv/app/src/shop/gateway.py", line 52, in charge\n'
    "    raise GatewayError(f'declined: {code}')\n"
    "shop.gateway.GatewayError: declined: %04d\n"
)


def generate(rows: int, due: int, seed: int, now: datetime) -> Iterator[tuple[object, ...]]:
    """Yield ``rows`` tuples in COLUMNS order, oldest first; the first ``due`` are due."""
    rng = random.Random(seed)
    pool = ["".join(rng.choices("0123456789abcdef", k=960)) for _ in range(512)]
    meta = '{"children": []}'
    due_span = OLDEST - DUE_NEWEST
    # Only the due rows older than FAILURE_NEWEST may be failures: raise their share so
    # that DUE_FAILURE_SHARE of all due rows are failures.
    old_enough = (OLDEST - FAILURE_NEWEST) / due_span
    due_failure_p = DUE_FAILURE_SHARE / old_enough
    kept = rows - due
    kept_span = KEPT_OLDEST - KEPT_NEWEST
    for i in range(rows):
        if i < due:
            age = OLDEST - due_span * ((i + rng.random()) / due)
            failure = age > FAILURE_NEWEST and rng.random() < due_failure_p
        else:
            age = KEPT_OLDEST - kept_span * ((i - due + rng.random()) / kept)
            failure = rng.random() < KEPT_FAILURE_SHARE
        done = now - age
        started = done - timedelta(milliseconds=rng.randrange(5, 30_000))
        created = started - timedelta(milliseconds=rng.randrange(1, 2_000))
        payload = pool[rng.randrange(len(pool))]
        if failure:
            status = "FAILURE"
            result = (
                '{"exc_type": "GatewayError", "exc_module": "shop.gateway", '
                f'"exc_message": ["declined: {i % 10000:04d}", "{payload}"]}}'
            )
            traceback = TRACEBACK % (i % 10000)
        else:
            status = "SUCCESS"
            result = f'{{"order": {i}, "status": "ok", "lines": "{payload}"}}'
            traceback = None
        yield (
            str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            None,
            TASK_NAMES[rng.randrange(len(TASK_NAMES))],
            f'"({i}, {rng.randrange(1000)})"',
            '"{}"',
            status,
            WORKERS[rng.randrange(len(WORKERS))],
            "application/json",
            "utf-8",
            result,
            created,
            started,
            done,
            traceback,
            meta,
        )


def _copy_text(value: object) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, datetime):
        return value.isoformat()
    text = str(value)
    if "\\" in text or "\n" in text or "\t" in text or "\r" in text:
        text = (
            text.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
        )
    return text


def load_postgresql(connection, rows: Iterator[tuple[object, ...]]) -> None:  # type: ignore[no-untyped-def]
    connection.ensure_connection()
    raw = connection.connection
    with raw.cursor() as cursor:
        cursor.execute("SET synchronous_commit = off")
        with cursor.copy(f"COPY {TABLE} ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            chunk: list[str] = []
            for row in rows:
                chunk.append("\t".join(map(_copy_text, row)))
                if len(chunk) >= 5000:
                    copy.write("\n".join(chunk) + "\n")
                    chunk.clear()
            if chunk:
                copy.write("\n".join(chunk) + "\n")
    raw.commit()


def load_sqlite(connection, rows: Iterator[tuple[object, ...]]) -> None:  # type: ignore[no-untyped-def]
    adapt = connection.ops.adapt_datetimefield_value  # exactly how Django stores datetimes
    connection.ensure_connection()
    raw = connection.connection
    raw.execute("PRAGMA synchronous = OFF")
    raw.execute("PRAGMA cache_size = -1000000")  # 1 GB page cache, this connection only
    sql = f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    dates = [COLUMNS.index(c) for c in ("date_created", "date_started", "date_done")]

    def adapted() -> Iterator[tuple[object, ...]]:
        for row in rows:
            values = list(row)
            for index in dates:
                values[index] = adapt(values[index])
            yield tuple(values)

    stream = adapted()
    while True:
        batch = [row for _, row in zip(range(200_000), stream)]
        if not batch:
            break
        raw.execute("BEGIN")
        raw.executemany(sql, batch)
        raw.execute("COMMIT")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--due", type=int, required=True)
    parser.add_argument("--seed", type=int, default=20240601)
    args = parser.parse_args()
    if not 0 <= args.due <= args.rows:
        parser.error("--due must be between 0 and --rows")

    setup_django()
    from django.db import connection
    from django_celery_results.models import TaskResult

    model_columns = {f.column for f in TaskResult._meta.concrete_fields} - {"id"}
    if model_columns != set(COLUMNS):
        raise SystemExit(f"TaskResult columns changed: {sorted(model_columns ^ set(COLUMNS))}")
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT COUNT(*) FROM {TABLE}")
        if cursor.fetchone()[0]:
            raise SystemExit(f"{TABLE} is not empty")

    now = datetime.now(timezone.utc)
    started = time.monotonic()
    rows = generate(args.rows, args.due, args.seed, now)
    if connection.vendor == "postgresql":
        load_postgresql(connection, rows)
    elif connection.vendor == "sqlite":
        load_sqlite(connection, rows)
    else:
        raise SystemExit(f"unsupported database: {connection.vendor}")
    seconds = time.monotonic() - started

    expires_cutoff = now - timedelta(days=1)
    failure_cutoff = now - timedelta(days=7)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT status, date_done < %s, date_done < %s, COUNT(*), "
            f"AVG(LENGTH(result)) FROM {TABLE} GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
            [expires_cutoff, failure_cutoff],
        )
        groups = [
            {"status": s, "older_than_1d": bool(a), "older_than_7d": bool(b), "rows": n,
             "avg_result_chars": round(float(avg))}
            for s, a, b, n, avg in cursor.fetchall()
        ]
    due = sum(
        g["rows"] for g in groups
        if (g["status"] == "FAILURE" and g["older_than_7d"])
        or (g["status"] != "FAILURE" and g["older_than_1d"])
    )
    stock_due = sum(g["rows"] for g in groups if g["older_than_1d"])
    print(json.dumps({
        "rows": args.rows,
        "due": due,
        "stock_due": stock_due,
        "seed": args.seed,
        "generated_at": now.isoformat(),
        "load_seconds": round(seconds, 1),
        "groups": groups,
    }))
    if due != args.due or stock_due != args.due:
        raise SystemExit(f"generated {due} due rows ({stock_due} for stock), wanted {args.due}")


if __name__ == "__main__":
    main()
