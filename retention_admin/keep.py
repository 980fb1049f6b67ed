"""What is kept whatever its policy says: the one place that decides "held".

A result is *kept* (never deleted, never expired) while any of these holds:

* an active ``RetentionHold`` names its task id (``until`` empty or in the future);
* it was restored from an archive batch whose ``grace_until`` is in the future;
* it is a header result of a chord that is still waiting: a ``ChordCounter``
  lists its task id, and the chord's callback will read every header result
  when the last part reports (django-celery-results' ``trigger_callback``).

Every deciding path asks this module: the SQL walks and the archive path
(``kept_q``, a *live* subquery evaluated inside every DELETE, so a hold placed or
a batch restored while a walk is running protects its rows from the next
statement on), the Redis writer and enforcer (``kept_task_ids``, a query per
batch of task ids, never the whole hold table), preview, explain and dry runs.

Which policy governs a result, and when it is due, is ``matching.Governance``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from django.db import connections, router
from django.db.models import BinaryField, BooleanField, F, Func, Q
from django.db.models.lookups import In
from django.db.models.expressions import Expression
from django_celery_results.models import ChordCounter

from .models import ArchiveBatch, ArchivedResult, RetentionHold

# Task ids per query when asking which of a batch of ids is kept.
ID_CHUNK = 2000


def kept_q(now: datetime, *, using: str, column: str = "task_id") -> Q:
    """Rows of the result table on ``using`` that are kept at ``now``; ``column``
    holds the id a hold names (``task_id`` for TaskResult, ``group_id`` for GroupResult).

    Where the hold and archive tables share the result table's database, each is
    a subquery that the database evaluates in every statement: what is created
    during a run counts from the next statement. Tables on another database, and
    the chords' parts (ids inside a JSON column), are read once, here, and passed
    as one array parameter (which scales to any number of ids, unlike a list of
    literals). Build it once per run, before anything is deleted.
    """
    holds = RetentionHold.objects.active(now)
    q = _in(column, holds, "task_id", using)
    graced = ArchivedResult.objects.filter(
        batch_id__in=ArchiveBatch.objects.filter(grace_until__gt=now).values("pk")
    )
    # Chords still waiting, as their counters stand now: a chord applied later has
    # parts younger than any cutoff, and a counter deleted during the run (by its
    # chord pass) only keeps its parts and group one run longer, so that a dry
    # run and the real run after it count the same rows.
    if column != "task_id":
        groups = list(ChordCounter.objects.using(router.db_for_read(ChordCounter)).values_list("group_id", flat=True))
        return q | Q(InArray(column, groups)) if groups else q
    q |= _in(column, graced, "task_id", using)
    # TaskResult has no group column: the header parts' ids come from the counters.
    parts = waiting_chord_parts()
    return q | Q(InArray(column, sorted(parts))) if parts else q


def waiting_chord_parts() -> set[str]:
    """Task ids of the header parts of every chord whose counter still exists."""
    parts: set[str] = set()
    counters = ChordCounter.objects.using(router.db_for_read(ChordCounter))
    for sub_tasks in counters.values_list("sub_tasks", flat=True).iterator(chunk_size=500):
        try:
            parts.update(header_task_ids(json.loads(sub_tasks)))
        except (ValueError, TypeError, IndexError):
            continue  # unreadable: the chord pass reports it and keeps the counter
    return parts


def header_task_ids(results: list[Any]) -> Iterator[str]:
    """Task ids in a ChordCounter's ``sub_tasks`` (nested result tuples, see result_from_tuple)."""
    for item in results:
        res, nodes = item
        if nodes:
            yield from header_task_ids(nodes)
        else:
            yield res[0] if isinstance(res, (list, tuple)) else res


def _in(column: str, source: Any, field: str, using: str) -> Q:
    db = router.db_for_read(source.model)
    if db == using:
        if connections[using].vendor == "mysql":
            # Task ids match exactly: MySQL's usual collations ignore case and
            # trailing spaces, so a hold on "A " would keep "a" too.
            binary = source.using(using).annotate(exact_id=AsBinary(field)).values("exact_id")
            return Q(In(AsBinary(column), binary))
        return Q(**{f"{column}__in": source.using(using).values(field)})
    ids = list(source.using(db).values_list(field, flat=True).distinct())
    if not ids:
        return Q(pk__in=[])
    return Q(InArray(column, ids))


class AsBinary(Func):
    """MySQL: the value as bytes, compared exactly (no collation)."""

    template = "CAST(%(expressions)s AS BINARY)"
    output_field = BinaryField()

    def __init__(self, column: str):
        super().__init__(F(column))


class InArray(Expression):
    """``column`` is one of ``values``, sent as a single parameter whatever their number."""

    conditional = True

    def __init__(self, column: str, values: list[str]):
        super().__init__(output_field=BooleanField())
        self.column, self.values = column, values

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:
        column = compiler.compile(compiler.query.resolve_ref(self.column))[0]
        vendor = connection.vendor
        if vendor == "postgresql":
            return f"{column} = ANY(%s::text[])", [self.values]
        if vendor == "sqlite":
            return f"{column} IN (SELECT value FROM json_each(%s))", [json.dumps(self.values)]
        if vendor == "mysql":
            # Compared as bytes: JSON_TABLE's column has the server's default
            # collation, which need not be the table's (MySQL refuses to mix them).
            return (
                f"CAST({column} AS BINARY) IN (SELECT CAST(kept.v AS BINARY) FROM JSON_TABLE(%s, '$[*]' "
                "COLUMNS (v VARCHAR(255) CHARACTER SET utf8mb4 PATH '$')) AS kept)",
                [json.dumps(self.values)],
            )
        return f"{column} IN ({', '.join(['%s'] * len(self.values))})", list(self.values)

    def resolve_expression(self, *args: Any, **kwargs: Any) -> InArray:
        return self


def kept_task_ids(task_ids: Iterable[str], now: datetime) -> set[str]:
    """The ids among ``task_ids`` that are held or in restore grace at ``now``
    (Redis results: a chord's header keys are Celery's own business there).

    One query per ``ID_CHUNK`` ids, the ids sent as one array parameter: for the
    enforcer, preparing thousands of ``IN`` parameters cost more than judging the keys.
    """
    wanted = list(dict.fromkeys(task_ids))
    kept: set[str] = set()
    holds_db = router.db_for_read(RetentionHold)
    same_db = holds_db == router.db_for_read(ArchivedResult)
    for start in range(0, len(wanted), ID_CHUNK):
        chunk = InArray("task_id", wanted[start : start + ID_CHUNK])
        held = RetentionHold.objects.using(holds_db).active(now).filter(chunk).values_list("task_id", flat=True)
        graced = ArchivedResult.objects.filter(chunk, batch__grace_until__gt=now).values_list("task_id", flat=True)
        if same_db:
            kept.update(held.order_by().union(graced.using(holds_db).order_by()))
        else:
            kept.update(held)
            kept.update(graced)
    return kept


def is_kept(task_id: str, now: datetime) -> bool:
    return bool(kept_task_ids([task_id], now))
