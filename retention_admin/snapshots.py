"""Storage snapshots: how big the result store is, recorded for the growth charts."""

from __future__ import annotations

from typing import Any

from django.db import DatabaseError, connections, router
from django.db.models import Count, Sum
from django_celery_results.models import ChordCounter, GroupResult, TaskResult

from . import conf
from .matching import row_bytes_expression
from .models import StorageSnapshot


def table_bytes(using: str) -> tuple[int | None, bool]:
    """Bytes of the TaskResult table and its indexes, and whether that is an estimate."""
    connection = connections[using]
    table = TaskResult._meta.db_table
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
            try:
                cursor.execute(
                    "SELECT SUM(pgsize) FROM dbstat WHERE name = %s OR name IN "
                    "(SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = %s)",
                    [table, table],
                )
                return int(cursor.fetchone()[0] or 0), False
            except DatabaseError:
                return None, True  # dbstat not compiled in: the row estimate stands in
    return None, True


def take_snapshot(using: str | None = None) -> StorageSnapshot:
    using = using or router.db_for_read(TaskResult)
    results = TaskResult.objects.using(using)
    by_status = dict(results.order_by().values_list("status").annotate(n=Count("id")))
    top: list[dict[str, Any]] = [
        {"task_name": row["task_name"], "rows": row["rows"], "bytes": row["bytes"] or 0}
        for row in results.order_by()
        .values("task_name")
        .annotate(rows=Count("id"), bytes=Sum(row_bytes_expression()))
        .order_by("-bytes")[: conf.get_config().snapshot_top_tasks]
    ]
    size, estimated = table_bytes(using)
    if size is None:
        size = int(results.aggregate(total=Sum(row_bytes_expression()))["total"] or 0)
    return StorageSnapshot.objects.using(router.db_for_write(StorageSnapshot)).create(
        task_rows=sum(by_status.values()),
        group_rows=GroupResult.objects.using(using).count(),
        chord_rows=ChordCounter.objects.using(using).count(),
        rows_by_status=by_status,
        rows_by_task=top,
        table_bytes=size,
        bytes_estimated=estimated,
        database=using,
    )
