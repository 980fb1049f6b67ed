"""One batch of deletion: a single short statement that picks and deletes due rows.

Where the database can (PostgreSQL, SQLite 3.35+, MariaDB 10.5+), a batch is one
``DELETE ... RETURNING`` statement: it selects the next ``limit`` due rows in
``(date_done, id)`` order and deletes them in one round trip, returning what the
run reports (id, date_done, estimated bytes). Elsewhere (MySQL), it falls back to
a SELECT of ids and a DELETE by id. Either way the DELETE itself carries every
condition, so a row re-run or put on hold since it was picked is not deleted.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import connections, transaction
from django.db.models import Q, QuerySet

Row = tuple[Any, datetime, int]


def after_cursor(after: tuple[datetime, Any] | None) -> Q:
    """Rows past a keyset cursor on (date_done, id); everything when there is none."""
    if after is None:
        return Q()
    done, pk = after
    return Q(date_done__gte=done) & ~Q(date_done=done, id__lte=pk)


def delete_batch(
    model: Any, due: Q, using: str, limit: int, after: tuple[datetime, Any] | None, size: Any
) -> list[Row]:
    """Delete up to ``limit`` due rows past ``after``; return (id, date_done, bytes) of each."""
    manager = model._default_manager.using(using)
    picked = manager.filter(due & after_cursor(after)).order_by("date_done", "id")
    connection = connections[using]
    with transaction.atomic(using=using):
        if connection.vendor == "mysql" and not (
            connection.mysql_is_mariadb and connection.mysql_version >= (10, 5)
        ):
            rows = list(picked.values_list("id", "date_done", size)[:limit])
            if rows:
                manager.filter(due, id__in=[r[0] for r in rows]).delete()
            return rows
        return _delete_returning(picked, due, connection, limit, size)


def _delete_returning(picked: QuerySet[Any], due: Q, connection: Any, limit: int, size: Any) -> list[Row]:
    query = picked.query
    table = connection.ops.quote_name(query.model._meta.db_table)
    # The same Django-compiled conditions, as SQL for the DELETE's own WHERE clause.
    where_qs = picked.model._default_manager.using(picked.db).filter(due)
    compiler = where_qs.query.get_compiler(connection=connection)
    where_sql, where_params = compiler.compile(where_qs.query.where)
    size_sql, size_params = _compile_size(where_qs.values_list("id", "date_done", size), connection)
    id_col = f"{table}.{connection.ops.quote_name('id')}"
    done_col = f"{table}.{connection.ops.quote_name('date_done')}"
    returning = f"RETURNING {id_col}, {done_col}, {size_sql}"
    if connection.vendor == "mysql":
        # MariaDB: DELETE takes ORDER BY and LIMIT itself.
        sql = (
            f"DELETE FROM {table} WHERE {where_sql} "
            f"ORDER BY {done_col}, {id_col} LIMIT %s {returning}"
        )
        params = [*where_params, limit, *size_params]
    else:
        inner_sql, inner_params = picked.values("id")[:limit].query.sql_with_params()
        sql = f"DELETE FROM {table} WHERE {id_col} IN ({inner_sql}) AND {where_sql} {returning}"
        params = [*inner_params, *where_params, *size_params]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    converters = _converters(connection, picked.model)
    return [(pk, converters(done), int(nbytes or 0)) for pk, done, nbytes in rows]


def _compile_size(qs: QuerySet[Any], connection: Any) -> tuple[str, list[Any]]:
    """SQL for the third selected column (the size estimate) of ``qs``."""
    compiler = qs.query.get_compiler(connection=connection)
    select, _klass_info, _annotations = compiler.get_select()
    expression = select[2][0]
    sql, params = compiler.compile(expression)
    return sql, list(params)


def _converters(connection: Any, model: Any) -> Any:
    """Turn a raw date_done value into the aware datetime the ORM would give."""
    field = model._meta.get_field("date_done")
    column = field.get_col(model._meta.db_table)
    convert = [*connection.ops.get_db_converters(column), *field.get_db_converters(connection)]

    def apply(value: Any) -> datetime:
        for converter in convert:
            value = converter(value, column, connection)
        return value  # type: ignore[no-any-return]

    return apply
