"""Putting archived results back into ``TaskResult``.

Semantics (README, "Restore"): every requested batch is verified (checksum,
size, record count) before anything is written, and a batch that fails is
refused with nothing restored. Within a batch a task id archived twice is
restored once, from its newest record. A task id already in ``TaskResult`` is
skipped and reported, never overwritten. Each batch is restored in one
transaction: all of it or none of it. Restored results are protected from
cleanup for a grace period (``RESTORE_GRACE_DAYS``, or ``--grace-days``) so a
restore is not undone by the next tier run; the operator can end it early.

Archived dates are UTC instants; each goes back in the form Django stores on the
connection (with ``USE_TZ = False``: naive ``TIME_ZONE`` local time), so a
restored ``date_done`` equals the one that was archived.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import IntegrityError, connections, router, transaction
from django.utils import timezone
from django_celery_results.models import TaskResult

from . import archive, conf
from .models import ArchiveBatch

INSERT_CHUNK = 1000
# The primary key is not restored: it may have been reused since (MySQL and SQLite
# can hand out a deleted row's id again). The task id is the result's identity.
SKIPPED_COLUMNS = {"id"}


class RestoreError(Exception):
    """A restore refused before anything was written; the message says why."""


@dataclass
class BatchRestore:
    batch: int
    records: int = 0
    restored: int = 0
    already_present: list[str] = field(default_factory=list)
    duplicates: int = 0
    not_in_batch: list[str] = field(default_factory=list)
    # Nothing to restore: the batch (status, grace) was left as it was.
    unchanged: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "unchanged": self.unchanged,
            "records": self.records,
            "restored": self.restored,
            "already_present": len(self.already_present),
            "already_present_ids": self.already_present[:20],
            "duplicates": self.duplicates,
            "not_in_batch": self.not_in_batch,
        }


@dataclass
class RestoreReport:
    dry_run: bool
    batches: list[BatchRestore]
    grace_until: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "grace_until": self.grace_until,
            "batches": [b.as_dict() for b in self.batches],
            "totals": {
                "records": sum(b.records for b in self.batches),
                "restored": sum(b.restored for b in self.batches),
                "already_present": sum(len(b.already_present) for b in self.batches),
                "duplicates": sum(b.duplicates for b in self.batches),
            },
        }


def load_batches(batch_ids: Iterable[int]) -> list[ArchiveBatch]:
    ids = list(dict.fromkeys(batch_ids))
    found = {b.pk: b for b in ArchiveBatch.objects.filter(pk__in=ids)}
    missing = [str(i) for i in ids if i not in found]
    if missing:
        raise RestoreError(f"No archive batch with id {', '.join(missing)}.")
    batches = [found[i] for i in ids]
    for batch in batches:
        if batch.status == ArchiveBatch.Status.WRITING:
            raise RestoreError(f"Archive batch {batch.pk} is still being written (or was interrupted); it holds nothing to restore.")
        if batch.status == ArchiveBatch.Status.CORRUPT:
            raise RestoreError(f"Archive batch {batch.pk} is marked corrupt: {batch.error or 'see the admin'}")
    return batches


def restore_batches(
    batch_ids: Iterable[int],
    *,
    task_ids: Iterable[str] | None = None,
    dry_run: bool = False,
    grace_days: float | None = None,
    using: str | None = None,
) -> RestoreReport:
    """Verify every batch, then restore each in its own transaction (see the module docstring)."""
    if grace_days is not None and grace_days < 0:
        raise RestoreError(f"--grace-days must be 0 or more, not {grace_days}.")
    batches = load_batches(batch_ids)
    for batch in batches:
        check = archive.verify_batch(batch)
        if not check.ok:
            raise RestoreError(f"Archive batch {batch.pk} was not restored: {check.problem}. Nothing was written.")
    wanted = set(task_ids) if task_ids is not None else None
    db = using or router.db_for_write(TaskResult)
    days = conf.get_config().restore_grace_days if grace_days is None else grace_days
    grace_until = timezone.now() + timedelta(days=days) if days > 0 else None
    # Newest batches first: a task id archived in several batches comes back from
    # the newest; the older copies are then "already present".
    order = sorted(batches, key=lambda b: (b.last_done is not None, b.last_done, b.pk), reverse=True)
    restored: set[str] = set()
    by_id = {b.pk: _restore_one(b, wanted, dry_run, db, grace_until, restored) for b in order}
    return RestoreReport(dry_run, [by_id[b.pk] for b in batches], _report_time(grace_until))


def _report_time(value: datetime | None) -> str | None:
    """ISO 8601 with its offset: naive (``USE_TZ = False``) means ``TIME_ZONE`` local time."""
    if value is None:
        return None
    if timezone.is_naive(value):
        value = timezone.make_aware(value, timezone.get_default_timezone())
    return value.isoformat()


def _restore_one(
    batch: ArchiveBatch, wanted: set[str] | None, dry_run: bool, db: str, grace_until: Any, restored: set[str]
) -> BatchRestore:
    report = BatchRestore(batch=batch.pk)
    newest: dict[str, dict[str, Any]] = {}
    for record in archive.read_records(batch):
        task_id = record.get("task_id")
        if not task_id or (wanted is not None and task_id not in wanted):
            continue
        report.records += 1
        kept = newest.get(task_id)
        if kept is not None:
            report.duplicates += 1
            if _done(record) <= _done(kept):
                continue
        newest[task_id] = record
    if wanted is not None:
        report.not_in_batch = sorted(wanted - set(newest))
    present = {task_id for task_id in newest if task_id in restored}
    ids = [task_id for task_id in newest if task_id not in present]
    for start in range(0, len(ids), INSERT_CHUNK):
        present.update(
            TaskResult.objects.using(db).filter(task_id__in=ids[start : start + INSERT_CHUNK]).values_list("task_id", flat=True)
        )
    report.already_present = sorted(present)
    rows = [record for task_id, record in newest.items() if task_id not in present]
    report.restored = len(rows)
    if dry_run:
        # A real restore finds what earlier batches restored in the table itself;
        # only a dry run needs to remember it (and memory stays flat otherwise).
        restored.update(record["task_id"] for record in rows)
    if dry_run:
        return report
    if not rows:
        # Every record is in the table already (restored before, or never deleted):
        # nothing is written, and the batch's grace period is not extended.
        report.unchanged = True
        return report
    try:
        with transaction.atomic(using=db):
            insert_records(rows, db)
            ArchiveBatch.objects.using(db).filter(pk=batch.pk).update(
                status=ArchiveBatch.Status.RESTORED, restored_at=timezone.now(), grace_until=grace_until
            )
    except IntegrityError as exc:
        # A task id stored by the application after the presence check: the row
        # there is newer. All or nothing: run the restore again to skip it.
        raise RestoreError(
            f"Archive batch {batch.pk} was not restored: a result with one of its task ids was "
            f"stored while restoring ({exc}). Nothing of this batch was written; run the restore again."
        ) from exc
    return report


_NEVER = datetime.min.replace(tzinfo=UTC)


def _done(record: dict[str, Any]) -> datetime:
    """A record's date_done as an instant (records without one sort first).

    Compared as instants, not as text: two records of one task id may carry
    different offsets (an archive written by another version or by hand).
    """
    value = record.get("date_done")
    try:
        parsed = archive.as_datetime(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    return parsed or _NEVER


def insert_records(records: list[dict[str, Any]], db: str) -> None:
    """Insert records with every column as archived (raw SQL: ``auto_now`` would overwrite dates)."""
    connection = connections[db]
    fields = [f for f in archive.TASK_RESULT_FIELDS if f.attname not in SKIPPED_COLUMNS]
    qn = connection.ops.quote_name
    columns = ", ".join(qn(f.column) for f in fields)
    placeholders = ", ".join(["%s"] * len(fields))
    table = qn(TaskResult._meta.db_table)
    if connection.vendor == "postgresql":
        # COPY, with the archived text as it is (PostgreSQL parses the ISO dates):
        # four times the rows a second of INSERTs with Python-parsed dates.
        connection.ensure_connection()
        # A session in TIME_ZONE (USE_TZ = False) would read a date without an
        # offset as local time; the archive format says such a date is UTC.
        dates = [] if connection.timezone_name == "UTC" else [
            i for i, f in enumerate(fields) if f.get_internal_type() == "DateTimeField"
        ]
        with connection.connection.cursor() as cursor, cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
            for record in records:
                row = [_raw(record, f) for f in fields]
                for i in dates:
                    if isinstance(row[i], str):
                        row[i] = archive.as_datetime(row[i])
                copy.write_row(row)
        return
    sql = f"INSERT INTO {table} ({columns}) VALUES ({placeholders})"
    with connection.cursor() as cursor:
        for start in range(0, len(records), INSERT_CHUNK):
            cursor.executemany(
                sql, [_row(record, fields, connection) for record in records[start : start + INSERT_CHUNK]]
            )


def _row(record: dict[str, Any], fields: list[Any], connection: Any) -> list[Any]:
    values = []
    for f in fields:
        value = _raw(record, f)
        if isinstance(value, str) and f.get_internal_type() == "DateTimeField":
            # The archived UTC instant, in the form this connection stores (naive
            # TIME_ZONE local time without USE_TZ: SQLite and MySQL refuse aware ones).
            value = archive.db_datetime(value, connection)
        values.append(f.get_db_prep_save(value, connection))
    return values


def _raw(record: dict[str, Any], field: Any) -> Any:
    value = record.get(field.attname)
    if value is None and not field.null:
        value = field.get_default()
    return value
