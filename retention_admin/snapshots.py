"""Storage snapshots: how big the result store is, recorded for the growth charts.

A snapshot must stay cheap on a large result table (target: 3 s on 2M rows), so
it reads every row only while the table is small. Above ``SNAPSHOT_EXACT_ROWS``
(by the database's own statistics; SQLite has none, so there a ``COUNT(*)``,
which walks the smallest index) the figures come from a sample:

* PostgreSQL: ``TABLESAMPLE SYSTEM`` reads a random share of the table's pages
  and every live row on them; scaled by that share it estimates the total and
  the split at once. It needs no index, so it does not walk the dead index
  entries a cleanup has just left (``MIN(id)`` right after deleting a million
  rows took a second), and it counts the rows that are there now, where the
  planner's statistics still count the deleted ones until the next ANALYZE.
* Elsewhere (and on a PostgreSQL table too small for a page sample to mean
  anything) the total comes from the statistics (or the count) and the split
  from a stratified sample: the id range is cut into strata and the first rows
  of each stratum are read along the primary key, each weighted by how densely
  rows sit there (so the sparse ranges a cleanup leaves behind are not
  over-counted).

Everything that is not exact is flagged as an estimate, and the dashboard says so.

After a snapshot is stored its figures are compared with the thresholds in
``RETENTION_ADMIN``; a threshold newly crossed logs a WARNING and sends
``retention_admin.signals.threshold_crossed`` (see ``alerts.py``).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from celery import states
from django.db import DatabaseError, connections, models, router
from django.db.models import Case, Count, IntegerField, Max, Min, Q, QuerySet, Sum, Value, When
from django.utils import timezone
from django_celery_results.models import ChordCounter, GroupResult, TaskResult

from . import conf
from .matching import row_bytes_expression
from .models import StorageSnapshot

logger = logging.getLogger(__name__)

# What a result column holds when a task returned nothing worth storing.
EMPTY_RESULTS = ("", "null", "None", '""', "[]", "{}")
STUCK_STATES = (states.PENDING, states.STARTED)
# Task names recorded in ``task_profile`` (the recommendations read it).
PROFILE_LIMIT = 1000
SAMPLE_STRATA = 100
MIN_STRATUM_ROWS = 20
# A page sample must cover at least this many pages: rows cluster by page (by
# insertion time, so by task mix), and fewer pages would make a noisy estimate.
MIN_SAMPLE_PAGES = 200


def empty_result_q() -> Q:
    return Q(result__isnull=True) | Q(result__in=EMPTY_RESULTS)


def _empty_flag() -> Case:
    return Case(When(empty_result_q(), then=Value(1)), default=Value(0), output_field=IntegerField())


# -- what the database knows about its own tables ---------------------------
def table_bytes(using: str, model: type[models.Model] = TaskResult) -> tuple[int | None, bool]:
    """Bytes of a table and its indexes, and whether that is an estimate (None: unknown)."""
    connection = connections[using]
    table = model._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT pg_total_relation_size(%s::regclass)", [table])
            return int(cursor.fetchone()[0]), False
        if connection.vendor == "mysql":
            cursor.execute(
                "SELECT COALESCE(data_length + index_length, 0) FROM information_schema.tables "
                "WHERE table_schema = DATABASE() AND table_name = %s",
                [table],
            )
            row = cursor.fetchone()
            # InnoDB's figures come from sampled statistics.
            return (int(row[0]) if row else None), True
        if connection.vendor == "sqlite":
            cursor.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = %s", [table])
            names = [table, *(row[0] for row in cursor.fetchall())]
            total = 0
            try:
                # One b-tree at a time: dbstat walks only the b-tree its name
                # constraint names, where an OR of names made it walk every page
                # of the database file (0.4 s a table on a 3 GB file).
                for name in names:
                    cursor.execute("SELECT SUM(pgsize) FROM dbstat WHERE name = %s AND aggregate = TRUE", [name])
                    total += int(cursor.fetchone()[0] or 0)
            except DatabaseError:
                return None, True  # dbstat not compiled in: the caller estimates
            return total, False
    return None, True


def statistics_rows(using: str, model: type[models.Model] = TaskResult) -> int | None:
    """The database's own estimate of a table's rows; None when it has none worth using."""
    connection = connections[using]
    table = model._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # The planner's own estimate: tuples per page at the last ANALYZE times
            # the pages the table has now (so growth since then counts).
            cursor.execute(
                "SELECT reltuples, relpages, pg_relation_size(oid) / current_setting('block_size')::int "
                "FROM pg_class WHERE oid = %s::regclass",
                [table],
            )
            reltuples, relpages, pages = cursor.fetchone()
            if reltuples is None or reltuples <= 0 or not relpages:
                return None  # never analysed (or empty): counting is the only way
            return int(reltuples / relpages * pages)
        if connection.vendor == "mysql":
            cursor.execute(
                "SELECT table_rows FROM information_schema.tables "
                "WHERE table_schema = DATABASE() AND table_name = %s",
                [table],
            )
            row = cursor.fetchone()
            return int(row[0]) if row and row[0] else None
    # SQLite keeps no row statistics; its COUNT(*) walks the smallest index, quickly.
    return None


def count_rows(model: type[models.Model], using: str, exact_limit: int) -> tuple[int, bool]:
    """Rows of a table and whether that is an estimate: exact below ``exact_limit``."""
    estimate = statistics_rows(using, model)
    if estimate is not None and estimate > exact_limit:
        return estimate, True
    return model._default_manager.using(using).count(), False


# -- the figures of the result table ----------------------------------------
class _Tally:
    """Rows, bytes and empty results, by status and by task name."""

    def __init__(self) -> None:
        self.status_rows: dict[str, float] = defaultdict(float)
        self.status_bytes: dict[str, float] = defaultdict(float)
        self.tasks: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])

    def add(self, task_name: str | None, status: str, rows: float, size: float, empty: float) -> None:
        self.status_rows[status] += rows
        self.status_bytes[status] += size
        task = self.tasks[task_name or ""]
        task[0] += rows
        task[1] += size
        task[2] += empty

    def scaled(self, factor: float) -> _Tally:
        out = _Tally()
        for status in self.status_rows:
            out.status_rows[status] = self.status_rows[status] * factor
            out.status_bytes[status] = self.status_bytes[status] * factor
        for name, (rows, size, empty) in self.tasks.items():
            out.tasks[name] = [rows * factor, size * factor, empty * factor]
        return out

    @property
    def rows(self) -> float:
        return sum(self.status_rows.values())

    @property
    def bytes(self) -> float:
        return sum(self.status_bytes.values())


def _grouped(using: str) -> QuerySet[Any]:
    """(task name, status, rows, bytes, empty results), one row per (task name, status)."""
    return (
        TaskResult.objects.using(using)
        .order_by()
        .values_list("task_name", "status")
        .annotate(n=Count("id"), size=Sum(row_bytes_expression()), empty=Sum(_empty_flag()))
    )


def exact_tally(using: str) -> _Tally:
    """Every row, one GROUP BY over (task name, status)."""
    tally = _Tally()
    for task_name, status, n, size, empty in _grouped(using):
        tally.add(task_name, status, n, size or 0, empty or 0)
    return tally


def sampled_tally(using: str, sample_rows: int) -> tuple[_Tally, int]:
    """A stratified sample along the primary key; returns (tally weighted to rows, rows read).

    Each stratum of the id range contributes its first rows in id order (an index
    range read). Weighting by the density of ids there estimates how many rows
    the stratum holds, so a stratum that a cleanup thinned out counts for what it
    holds, not for a full share.
    """
    results = TaskResult.objects.using(using).order_by()
    bounds = results.aggregate(lo=Min("id"), hi=Max("id"))
    lo, hi = bounds["lo"], bounds["hi"]
    tally = _Tally()
    if lo is None:
        return tally, 0
    # Enough rows per stratum for its density to mean something.
    strata = max(1, min(SAMPLE_STRATA, sample_rows // MIN_STRATUM_ROWS, hi - lo + 1))
    width = (hi - lo + 1) / strata
    per = max(1, sample_rows // strata)
    read = 0
    columns = ("id", "task_name", "status", "size", "empty")
    fetch = results.annotate(size=row_bytes_expression(), empty=_empty_flag())
    for index in range(strata):
        start = lo + int(index * width)
        end = lo + int((index + 1) * width) if index < strata - 1 else hi + 1
        if end <= start:
            continue
        chunk = list(fetch.filter(id__gte=start, id__lt=end).order_by("id").values_list(*columns)[:per])
        if not chunk:
            continue
        read += len(chunk)
        if len(chunk) < per:
            weight = 1.0  # the whole stratum was read
        else:
            span = chunk[-1][0] - start + 1
            weight = (end - start) / span  # rows per row read, at the density seen
        for _id, task_name, status, size, empty in chunk:
            tally.add(task_name, status, weight, (size or 0) * weight, empty * weight)
    return tally, read


def page_sampled_tally(using: str, sample_rows: int, estimate: int) -> tuple[_Tally, int] | None:
    """PostgreSQL: a ``TABLESAMPLE SYSTEM`` sample of pages; (tally scaled to the table, rows read).

    The share of pages is chosen to read about ``sample_rows`` rows at the
    statistics' density. Every live row of a sampled page is read, so dividing by
    the share estimates the live rows of the whole table and their split,
    however thinned out parts of it are. None when the table has too few pages
    for that share to be a sample worth the name (the caller samples by id).
    """
    table = TaskResult._meta.db_table
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_relation_size(%s::regclass) / current_setting('block_size')::int", [table]
        )
        pages = cursor.fetchone()[0] or 0
    percent = min(100.0, 100.0 * sample_rows / max(estimate, 1))
    if pages * percent / 100 < MIN_SAMPLE_PAGES:
        return None
    sql, params = _grouped(using).query.sql_with_params()
    # The ORM has no TABLESAMPLE: put it after the table in the compiled FROM.
    source = f"FROM {connection.ops.quote_name(table)}"
    if sql.count(source) != 1:
        return None
    # A literal (a float we computed), not a parameter: the select list before
    # FROM has placeholders of its own.
    sql = sql.replace(source, f"{source} TABLESAMPLE SYSTEM ({percent:.6f})")
    weight = 100.0 / percent
    tally = _Tally()
    read = 0
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        for task_name, status, n, size, empty in cursor.fetchall():
            read += n
            tally.add(task_name, status, n * weight, (size or 0) * weight, (empty or 0) * weight)
    return tally, read


def stuck_results(using: str, now: datetime) -> dict[str, Any]:
    """PENDING/STARTED results older than STUCK_AFTER_SECONDS (by the status index).

    ``now`` is ``timezone.now()``: naive without USE_TZ, like the dates it is compared with.
    """
    after = conf.get_config().stuck_after_seconds
    old = TaskResult.objects.using(using).order_by().filter(
        status__in=STUCK_STATES, date_done__lt=now - timedelta(seconds=after)
    )
    by_status = dict(old.values_list("status").annotate(n=Count("id")))
    oldest = old.aggregate(oldest=Min("date_done"))["oldest"] if by_status else None
    if oldest is not None and timezone.is_naive(oldest):
        # USE_TZ = False: a naive TIME_ZONE local time. Stored with its offset, so
        # the JSON says which zone it is in (a naive ISO string reads as UTC).
        oldest = timezone.make_aware(oldest, timezone.get_default_timezone())
    return {
        "older_than_s": after,
        "rows": {state: by_status.get(state, 0) for state in STUCK_STATES},
        "oldest": oldest.isoformat() if oldest else None,
    }


def redis_figures() -> dict[str, Any] | None:
    """Redis memory and key counts, when Redis holds results (None otherwise)."""
    try:
        from .redis_scan import redis_figures as figures
    except ImportError:
        return None
    try:
        return figures()
    except Exception as exc:  # noqa: BLE001 - a snapshot records the problem, never fails on it
        logger.warning("storage snapshot: could not read Redis figures: %s", exc)
        return {"error": str(exc)}


def _whole(values: dict[str, float]) -> dict[str, int]:
    return {key: int(round(value)) for key, value in sorted(values.items())}


def take_snapshot(
    using: str | None = None, *, health: bool = False, now: datetime | None = None
) -> StorageSnapshot:
    """Measure the result store, store a StorageSnapshot, and check the thresholds.

    ``health`` also runs the result backend round trip (``health.py``) and keeps
    its outcome with the snapshot, for the dashboard.
    """
    from .alerts import evaluate

    started = time.monotonic()
    using = using or router.db_for_read(TaskResult)
    config = conf.get_config()
    now = now or timezone.now()
    details: dict[str, Any] = {}

    estimate = statistics_rows(using)
    rows_method = "statistics"
    if estimate is None and connections[using].vendor == "sqlite":
        # No statistics, but COUNT(*) walks the smallest index quickly; only the
        # split by status and task name needs reading rows.
        estimate, rows_method = TaskResult.objects.using(using).count(), "count"
    if estimate is not None and estimate > config.snapshot_exact_rows:
        rows_estimated = True
        page_sample = None
        if connections[using].vendor == "postgresql":
            page_sample = page_sampled_tally(using, config.snapshot_sample_rows, estimate)
        if page_sample is not None:
            # The page sample estimates the total itself, from the rows there now.
            tally, read = page_sample
            total = int(round(tally.rows))
            details.update(rows_method="page sample", sample_rows=read)
        else:
            tally, read = sampled_tally(using, config.snapshot_sample_rows)
            total = estimate
            # The sample gives the shares; the statistics (or the count) give the total.
            tally = tally.scaled(total / tally.rows) if tally.rows else tally
            details.update(rows_method=rows_method, sample_rows=read)
    else:
        tally = exact_tally(using)
        total = int(round(tally.rows))
        rows_estimated = False
        details["rows_method"] = "count"

    size, bytes_estimated = table_bytes(using)
    details["bytes_method"] = {
        "postgresql": "pg_total_relation_size",
        "mysql": "information_schema",
        "sqlite": "dbstat",
    }.get(connections[using].vendor, "estimate")
    if size is None:
        # No figure from the database: the stored text plus a per-row overhead.
        size, bytes_estimated = int(tally.bytes), True
        details["bytes_method"] = "estimate from result sizes"
    tables: dict[str, int | None] = {"task_results": size}
    for label, model in (("group_results", GroupResult), ("chord_counters", ChordCounter)):
        tables[label] = table_bytes(using, model)[0]
    details["tables"] = tables

    group_rows, groups_estimated = count_rows(GroupResult, using, config.snapshot_exact_rows)
    chord_rows, chords_estimated = count_rows(ChordCounter, using, config.snapshot_exact_rows)
    if groups_estimated or chords_estimated:
        details["groups_estimated"] = True
    details["stuck"] = stuck_results(using, now)

    profile = sorted(tally.tasks.items(), key=lambda item: -item[1][1])
    top = [
        {"task_name": name or None, "rows": int(round(rows)), "bytes": int(round(size_))}
        for name, (rows, size_, _empty) in profile[: config.snapshot_top_tasks]
    ]
    task_profile = {
        name: {"rows": int(round(rows)), "bytes": int(round(size_)), "empty": int(round(empty))}
        for name, (rows, size_, empty) in profile[:PROFILE_LIMIT]
    }
    backend_health = None
    if health:
        from .health import check_backend, remember

        backend_health = check_backend().as_dict()
        remember(backend_health)

    snapshot = StorageSnapshot(
        taken_at=now,
        task_rows=total,
        group_rows=group_rows,
        chord_rows=chord_rows,
        rows_by_status=_whole(tally.status_rows),
        bytes_by_status=_whole(tally.status_bytes),
        rows_by_task=top,
        task_profile=task_profile,
        table_bytes=size,
        bytes_estimated=bytes_estimated,
        rows_estimated=rows_estimated,
        redis=redis_figures(),
        database=using,
        details=details,
        health=backend_health,
    )
    snapshot.duration_s = round(time.monotonic() - started, 3)
    snapshot.alerts = evaluate(snapshot)
    snapshot.save(using=router.db_for_write(StorageSnapshot))
    from .alerts import announce

    announce(snapshot)
    return snapshot
