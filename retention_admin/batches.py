"""One batch of deletion: a single short statement that picks and deletes due rows.

Where the database can (PostgreSQL, SQLite 3.35+, MariaDB 10.5+), a batch is one
``DELETE ... RETURNING`` statement: it picks the next ``limit`` due rows in
``(date_done, id)`` order and deletes them in one round trip, returning what the
run reports. Elsewhere (MySQL) it falls back to a SELECT of ids and a DELETE by
id. Either way the DELETE itself carries every condition, so a row re-run or put
on hold since it was picked is not deleted.

One walk can serve several scopes at once (the policies of a run and the
unmatched remainder, whose due sets are disjoint): ``label`` is an SQL
expression naming each row's scope, and the batch reports counts and bytes per
label. A run that walked the ``date_done`` index once per policy read every
row older than the policy's cutoff once per policy, most of them only to skip.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from django.db import connections, transaction
from django.db.models import IntegerField, Q, QuerySet, Value

Cursor = tuple[datetime, Any]


@dataclass(frozen=True)
class Batch:
    deleted: int
    bytes: int
    last: Cursor | None  # (date_done, id) of the last row deleted, for the next batch
    # label -> (rows deleted, estimated bytes), for the rows of each scope.
    by_label: dict[Any, tuple[int, int]] = field(default_factory=dict)


def _tally(rows: list[tuple[Any, int, int]]) -> Batch:
    """A batch from (label, rows, bytes) groups (the cursor is set by the caller)."""
    by_label: dict[Any, tuple[int, int]] = {}
    for label, count, nbytes in rows:
        old_count, old_bytes = by_label.get(label, (0, 0))
        by_label[label] = (old_count + int(count), old_bytes + int(nbytes or 0))
    return Batch(
        sum(c for c, _b in by_label.values()), sum(b for _c, b in by_label.values()), None, by_label
    )


def after_cursor(after: Cursor | None) -> Q:
    """Rows past a keyset cursor on (date_done, id); everything when there is none."""
    if after is None:
        return Q()
    done, pk = after
    return Q(date_done__gte=done) & ~Q(date_done=done, id__lte=pk)


class BatchDeleter:
    """The batches of one walk: ``deleter(after)`` deletes up to ``limit`` due rows
    past the cursor ``after``, oldest first, in one transaction.

    The SQL is compiled once; only the cursor changes. ``label``: an expression
    giving each row's scope (``Batch.by_label``); None puts every row under None.

    Compiling the due conditions (policies, holds, sizes) through the ORM took
    about 3 ms a batch, a third of a 2,000-row batch on PostgreSQL.
    """

    def __init__(self, model: Any, due: Q, using: str, limit: int, size: Any, label: Any = None):
        self.model, self.due, self.using, self.limit, self.size = model, due, using, limit, size
        self.label = label if label is not None else Value(None, output_field=IntegerField())
        self.connection = connection = connections[using]
        self.fallback = connection.vendor == "mysql" and not (
            connection.mysql_is_mariadb and connection.mysql_version >= (10, 5)
        )
        if self.fallback:
            return
        quote = connection.ops.quote_name
        self.table = table = quote(model._meta.db_table)
        self.id_col = f"{table}.{quote('id')}"
        self.done_col = f"{table}.{quote('date_done')}"
        # The Django-compiled conditions, for the DELETE's own WHERE clause and the pick.
        conditions = model._default_manager.using(using).filter(due)
        self.where_sql, where_params = conditions.query.get_compiler(connection=connection).compile(
            conditions.query.where
        )
        self.where_params = list(where_params)
        (size_sql, self.size_params), (label_sql, self.label_params) = _compile_columns(
            conditions.values_list("id", "date_done", size, self.label), first=2
        )
        self.returning = f"RETURNING {self.id_col}, {self.done_col}, {size_sql}, {label_sql}"

    def _cursor(self, after: Cursor | None) -> tuple[str, list[Any]]:
        """``after_cursor`` compiled to SQL (a small condition: about 0.1 ms)."""
        if after is None:
            return "", []
        query = self.model._default_manager.using(self.using).filter(after_cursor(after)).query
        sql, params = query.get_compiler(connection=self.connection).compile(query.where)
        return f" AND {sql}", list(params)

    def __call__(self, after: Cursor | None) -> Batch:
        connection = self.connection
        own_transaction = not connection.in_atomic_block
        with transaction.atomic(using=self.using):
            if connection.vendor == "postgresql" and own_transaction:
                # This transaction only deletes rows that are due. Not waiting for its
                # commit to reach the disk (or a synchronous standby) is safe: a crash
                # can only bring the rows back, and the next run deletes them again.
                # The run stops waiting for a flush of its own WAL on every batch.
                # Inside a caller's transaction the setting would cover the caller's
                # writes too, so there it is left alone.
                with connection.cursor() as cursor:
                    cursor.execute("SET LOCAL synchronous_commit TO OFF")
            if self.fallback:
                picked = self.model._default_manager.using(self.using).filter(self.due & after_cursor(after))
                return _select_then_delete(picked.order_by("date_done", "id"), self.due, self.limit, self.size, self.label)
            return self._delete_returning(after)

    def _delete_returning(self, after: Cursor | None) -> Batch:
        connection, table, where_sql = self.connection, self.table, self.where_sql
        order = f"ORDER BY {self.done_col}, {self.id_col} LIMIT {int(self.limit)}"
        returning_params = [*self.size_params, *self.label_params]
        if connection.vendor == "mysql":
            # MariaDB: DELETE takes ORDER BY and LIMIT itself.
            sql = f"DELETE FROM {table} WHERE {where_sql} {order} {self.returning}"
            params = [*self.where_params, *returning_params]
        else:
            cursor_sql, cursor_params = self._cursor(after)
            if connection.vendor == "postgresql":
                # = ANY(ARRAY(...)) runs the pick once; with IN (...) the planner may
                # hash-join against a scan of the whole due set, making every batch as
                # slow as the first one is fast. Picking physical row ids (ctid) lets the
                # DELETE fetch each row directly (a TID scan) instead of through the
                # primary key index: half the time a batch took in the benchmark. A row
                # updated in between has a new ctid and is not deleted.
                picked = f"{table}.ctid = ANY(ARRAY(SELECT {table}.ctid FROM {table} WHERE {where_sql}{cursor_sql} {order}))"
            else:
                picked = f"{self.id_col} IN (SELECT {self.id_col} FROM {table} WHERE {where_sql}{cursor_sql} {order})"
            sql = f"DELETE FROM {table} WHERE {picked} AND {where_sql} {self.returning}"
            params = [*self.where_params, *cursor_params, *self.where_params, *returning_params]
            if connection.vendor == "postgresql":
                return _summarised(connection, self.model, sql, params)
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
        if not rows:
            return Batch(0, 0, None)
        # Raw date_done values order as the dates do (datetimes, or ISO text on SQLite),
        # so only the cursor's needs converting.
        last_id, last_done, _size, _label = max(rows, key=lambda row: (row[1], row[0]))
        batch = _tally([(row_label, 1, nbytes) for _pk, _done, nbytes, row_label in rows])
        return replace(batch, last=(_to_datetime(connection, self.model, last_done), last_id))


def _select_then_delete(picked: QuerySet[Any], due: Q, limit: int, size: Any, label: Any) -> Batch:
    rows = list(picked.values_list("id", "date_done", size, label)[:limit])
    if not rows:
        return Batch(0, 0, None)
    manager = picked.model._default_manager.using(picked.db)
    groups: dict[Any, list[tuple[Any, int]]] = {}
    for pk, _done, nbytes, row_label in rows:
        groups.setdefault(row_label, []).append((pk, int(nbytes or 0)))
    tallies = []
    for row_label, members in groups.items():
        deleted, _ = manager.filter(due, id__in=[pk for pk, _nbytes in members]).delete()
        # A row that changed after the SELECT stays; scale the estimate to what went.
        tallies.append((row_label, deleted, sum(n for _pk, n in members) * deleted // len(members)))
    return replace(_tally(tallies), last=(rows[-1][1], rows[-1][0]))


def _summarised(connection: Any, model: Any, delete_sql: str, params: list[Any]) -> Batch:
    """Run a DELETE ... RETURNING (id, date_done, bytes, label) and sum it up in SQL.

    One row per label comes back: parsing thousands of timestamps in Python cost
    a third of a batch's time.
    """
    sql = (
        f"WITH deleted(id, date_done, nbytes, label) AS ({delete_sql}) "
        "SELECT deleted.label, count(*), coalesce(sum(deleted.nbytes), 0), last.date_done, last.id "
        "FROM deleted CROSS JOIN (SELECT id, date_done FROM deleted "
        "ORDER BY date_done DESC, id DESC LIMIT 1) AS last GROUP BY deleted.label, last.date_done, last.id"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    if not rows:
        return Batch(0, 0, None)
    _label, _count, _nbytes, last_done, last_id = rows[0]
    batch = _tally([(row_label, count, nbytes) for row_label, count, nbytes, _done, _id in rows])
    return replace(batch, last=(_to_datetime(connection, model, last_done), last_id))


def _compile_columns(qs: QuerySet[Any], first: int) -> list[tuple[str, list[Any]]]:
    """The SQL of a values_list's columns from ``first`` on, as Django compiles them."""
    compiler = qs.query.get_compiler(using=qs.db)
    select, _klass_info, _annotations = compiler.get_select()
    out = []
    for expression, *_rest in select[first:]:
        sql, params = compiler.compile(expression)
        out.append((sql, list(params)))
    return out


def _to_datetime(connection: Any, model: Any, value: Any) -> datetime:
    """A raw date_done value as the aware datetime the ORM would give."""
    field = model._meta.get_field("date_done")
    column = field.get_col(model._meta.db_table)
    for converter in [*connection.ops.get_db_converters(column), *field.get_db_converters(connection)]:
        value = converter(value, column, connection)
    return value  # type: ignore[no-any-return]
