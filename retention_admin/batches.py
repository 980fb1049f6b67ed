"""One batch of deletion: a single short statement that picks and deletes due rows.

Where the database can (PostgreSQL, SQLite 3.35+, MariaDB 10.5+), a batch is one
``DELETE ... RETURNING`` statement: it picks the next ``limit`` due rows in
``(date_done, id)`` order and deletes them in one round trip, returning what the
run reports. Elsewhere (MySQL) it falls back to a SELECT of ids and a DELETE by
id. Either way the DELETE itself carries every condition, so a row re-run or put
on hold since it was picked is not deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db import connections, transaction
from django.db.models import Q, QuerySet
from django.db.models.expressions import RawSQL

Cursor = tuple[datetime, Any]


@dataclass(frozen=True)
class Batch:
    deleted: int
    bytes: int
    last: Cursor | None  # (date_done, id) of the last row deleted, for the next batch


def after_cursor(after: Cursor | None) -> Q:
    """Rows past a keyset cursor on (date_done, id); everything when there is none."""
    if after is None:
        return Q()
    done, pk = after
    return Q(date_done__gte=done) & ~Q(date_done=done, id__lte=pk)


def delete_batch(model: Any, due: Q, using: str, limit: int, after: Cursor | None, size: Any) -> Batch:
    """Delete up to ``limit`` due rows past ``after``, oldest first, in one transaction."""
    picked = model._default_manager.using(using).filter(due & after_cursor(after))
    picked = picked.order_by("date_done", "id")
    connection = connections[using]
    with transaction.atomic(using=using):
        if connection.vendor == "mysql" and not (
            connection.mysql_is_mariadb and connection.mysql_version >= (10, 5)
        ):
            return _select_then_delete(picked, due, limit, size)
        return _delete_returning(picked, due, connection, limit, size)


def _select_then_delete(picked: QuerySet[Any], due: Q, limit: int, size: Any) -> Batch:
    rows = list(picked.values_list("id", "date_done", size)[:limit])
    if not rows:
        return Batch(0, 0, None)
    deleted, _ = picked.model._default_manager.using(picked.db).filter(
        due, id__in=[pk for pk, _done, _size in rows]
    ).delete()
    total = sum(nbytes for _pk, _done, nbytes in rows)
    # A row that changed after the SELECT stays; scale the estimate to what went.
    return Batch(deleted, total * deleted // len(rows), (rows[-1][1], rows[-1][0]))


def _delete_returning(picked: QuerySet[Any], due: Q, connection: Any, limit: int, size: Any) -> Batch:
    model = picked.model
    table = connection.ops.quote_name(model._meta.db_table)
    id_col = f"{table}.{connection.ops.quote_name('id')}"
    done_col = f"{table}.{connection.ops.quote_name('date_done')}"
    # The same Django-compiled conditions, as SQL for the DELETE's own WHERE clause.
    conditions = model._default_manager.using(picked.db).filter(due)
    where_sql, where_params = conditions.query.get_compiler(connection=connection).compile(
        conditions.query.where
    )
    size_sql, size_params = _compile_third_column(conditions.values_list("id", "date_done", size))
    returning = f"RETURNING {id_col}, {done_col}, {size_sql}"
    if connection.vendor == "mysql":
        # MariaDB: DELETE takes ORDER BY and LIMIT itself.
        sql = f"DELETE FROM {table} WHERE {where_sql} ORDER BY {done_col}, {id_col} LIMIT %s {returning}"
        params = [*where_params, limit, *size_params]
    else:
        if connection.vendor == "postgresql":
            # = ANY(ARRAY(...)) runs the pick once; with IN (...) the planner may
            # hash-join against a scan of the whole due set, making every batch as
            # slow as the first one is fast. Picking physical row ids (ctid) lets the
            # DELETE fetch each row directly (a TID scan) instead of through the
            # primary key index: half the time a batch took in the benchmark. A row
            # updated in between has a new ctid and is not deleted.
            inner_sql, inner_params = picked.values_list(RawSQL(f"{table}.ctid", []))[:limit].query.sql_with_params()
            picked_ids = f"{table}.ctid = ANY(ARRAY({inner_sql}))"
        else:
            inner_sql, inner_params = picked.values("id")[:limit].query.sql_with_params()
            picked_ids = f"{id_col} IN ({inner_sql})"
        sql = f"DELETE FROM {table} WHERE {picked_ids} AND {where_sql} {returning}"
        params = [*inner_params, *where_params, *size_params]
        if connection.vendor == "postgresql":
            return _summarised(connection, model, sql, params)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    if not rows:
        return Batch(0, 0, None)
    # Raw date_done values order as the dates do (datetimes, or ISO text on SQLite),
    # so only the cursor's needs converting.
    last_id, last_done, _size = max(rows, key=lambda row: (row[1], row[0]))
    return Batch(
        len(rows),
        sum(int(nbytes or 0) for _pk, _done, nbytes in rows),
        (_to_datetime(connection, model, last_done), last_id),
    )


def _summarised(connection: Any, model: Any, delete_sql: str, params: list[Any]) -> Batch:
    """Run a DELETE ... RETURNING (id, date_done, bytes) and sum it up in SQL.

    Only one row comes back: parsing thousands of timestamps in Python cost a
    third of a batch's time.
    """
    sql = (
        f"WITH deleted(id, date_done, nbytes) AS ({delete_sql}) "
        "SELECT count(*), coalesce(sum(deleted.nbytes), 0), last.date_done, last.id "
        "FROM deleted CROSS JOIN (SELECT id, date_done FROM deleted "
        "ORDER BY date_done DESC, id DESC LIMIT 1) AS last GROUP BY last.date_done, last.id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return Batch(0, 0, None)
    count, nbytes, last_done, last_id = row
    return Batch(int(count), int(nbytes), (_to_datetime(connection, model, last_done), last_id))


def _compile_third_column(qs: QuerySet[Any]) -> tuple[str, list[Any]]:
    compiler = qs.query.get_compiler(using=qs.db)
    select, _klass_info, _annotations = compiler.get_select()
    sql, params = compiler.compile(select[2][0])
    return sql, list(params)


def _to_datetime(connection: Any, model: Any, value: Any) -> datetime:
    """A raw date_done value as the aware datetime the ORM would give."""
    field = model._meta.get_field("date_done")
    column = field.get_col(model._meta.db_table)
    for converter in [*connection.ops.get_db_converters(column), *field.get_db_converters(connection)]:
        value = converter(value, column, connection)
    return value  # type: ignore[no-any-return]
