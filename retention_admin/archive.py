"""Archive objects: where they live, how one is written durably, read back and verified.

The format is gzip-compressed JSON Lines: one JSON object per line, one line per
result, with every ``TaskResult`` column as stored (dates as ISO 8601 strings in
UTC) plus ``"source"`` (``"database"`` or ``"redis"``) and ``"policy"``. Nothing
else is in the object, so any gzip + JSON reader can use it.

Dates in archive content and object names are UTC whatever ``USE_TZ`` says; dates
handed to the database are in the form Django uses on that connection (aware
with ``USE_TZ``; without it, naive ``TIME_ZONE`` local time). ``utc_datetime``
and ``db_datetime`` convert between the two.

The protocol (DESIGN.md, "Archive-then-delete") is split between this module and
the executor: ``ArchiveWriter`` streams records to a local temporary file, then
stores it (a local directory: fsync, atomic rename, fsync of the directory; a
Django storage: a completed ``save()``), checks the stored size, and only then,
in one transaction, records checksum, count and the per-record look-up rows and
flips the batch from ``writing`` to ``written``. Rows are deleted after that
(``delete_archived_rows``), matched on (task_id, date_done) from the look-up
rows, so a result that re-ran since it was archived stays.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import queue
import re
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from typing import IO, Any, NamedTuple

from django.conf import settings
from django.core.files import File
from django.core.files.storage import Storage, storages
from django.db import connections, router, transaction
from django.db.models import Q
from django.db.models.expressions import RawSQL
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.text import slugify
from django_celery_results.models import TaskResult

from . import conf
from .models import ArchiveBatch, ArchivedResult, CleanupRun, RetentionPolicy

STORAGE_ALIAS = "retention_archive"
STORAGE_PREFIX = "storage:"
try:
    # ISA-L's gzip: standard gzip output, ~3x the speed of zlib at its fastest level
    # (the archive's hot path); the standard library's gzip when it is missing.
    from isal import igzip as gzip_impl

    GZIP_LEVEL = 1  # ISA-L levels are 0-3; 1 compressed better than zlib's level 1
except ImportError:  # pragma: no cover - isal is a dependency; this is for odd platforms
    gzip_impl = gzip  # type: ignore[misc]
    GZIP_LEVEL = 1  # measured: zlib level 6 took 3.6x as long for objects only 6% smaller
LOOKUP_CHUNK = 2000
READ_CHUNK = 1 << 20


class ArchiveError(Exception):
    """An archive location or object cannot be used; the message says which and why."""


class ArchiveUnavailable(ArchiveError):
    """No usable archive location is configured."""


class ArchiveCorrupt(ArchiveError):
    """An archive object is missing, truncated, or fails its checksum or count."""


# -- locations ---------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    """Where archive objects are stored: a Django storage or a local directory."""

    label: str  # stored on each batch: "storage:retention_archive" or the directory
    storage: Storage | None = None
    directory: Path | None = None

    def open(self, name: str) -> IO[bytes]:
        if self.directory is not None:
            return open(self._path(name), "rb")
        assert self.storage is not None
        return self.storage.open(name, "rb")  # type: ignore[no-any-return]

    def exists(self, name: str) -> bool:
        if self.directory is not None:
            return self._path(name).is_file()
        assert self.storage is not None
        return bool(self.storage.exists(name))

    def size(self, name: str) -> int:
        if self.directory is not None:
            return self._path(name).stat().st_size
        assert self.storage is not None
        return int(self.storage.size(name))

    def delete(self, name: str) -> None:
        if self.directory is not None:
            self._path(name).unlink(missing_ok=True)
        elif self.storage is not None:
            self.storage.delete(name)

    def _path(self, name: str) -> Path:
        assert self.directory is not None
        path = (self.directory / name).resolve()
        if self.directory.resolve() not in path.parents:
            raise ArchiveError(f"archive object name {name!r} points outside {self.directory}")
        return path

    def store(self, name: str, source: IO[bytes]) -> str:
        """Store ``source`` durably under ``name``; return the name it was stored as."""
        if self.directory is not None:
            return self._store_file(name, source)
        assert self.storage is not None
        stored = self.storage.save(name, File(source, name=name))
        path = _local_path(self.storage, stored)
        if path is not None:
            # FileSystemStorage writes without fsync; make the object durable
            # before any row it holds is deleted.
            _fsync_file(path)
            _fsync_dir(path.parent)
        return stored

    def _store_file(self, name: str, source: IO[bytes]) -> str:
        target = self._path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        with open(partial, "wb") as out:
            source.seek(0)
            while chunk := source.read(READ_CHUNK):
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        # The final name appears only once the whole object is on disk.
        os.replace(partial, target)
        _fsync_dir(target.parent)
        return name


def _local_path(storage: Storage, name: str) -> Path | None:
    try:
        return Path(storage.path(name))
    except NotImplementedError:
        return None


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def configured_location() -> Location:
    """The location new archives go to; ArchiveUnavailable says what to configure."""
    if STORAGE_ALIAS in getattr(settings, "STORAGES", {}):
        return Location(label=STORAGE_PREFIX + STORAGE_ALIAS, storage=storages[STORAGE_ALIAS])
    directory = conf.get_config().archive_dir
    if directory is None:
        raise ArchiveUnavailable(
            f"No archive location: add a {STORAGE_ALIAS!r} storage to STORAGES or set "
            f"{conf.SETTING_NAME}['ARCHIVE_DIR'] to a writable directory."
        )
    path = Path(directory)
    if path.exists() and not path.is_dir():
        raise ArchiveUnavailable(
            f"The archive directory {str(path)!r} ({conf.SETTING_NAME}['ARCHIVE_DIR']) is a file, not a directory."
        )
    if not path.is_dir():
        raise ArchiveUnavailable(
            f"The archive directory {str(path)!r} ({conf.SETTING_NAME}['ARCHIVE_DIR']) does not exist."
        )
    if not os.access(path, os.W_OK | os.X_OK):
        raise ArchiveUnavailable(f"The archive directory {str(path)!r} is not writable by this process.")
    return Location(label=str(path), directory=path)


def location_of(batch: ArchiveBatch) -> Location:
    """Where an existing batch's object is, from the label recorded when it was written."""
    if batch.location.startswith(STORAGE_PREFIX):
        alias = batch.location[len(STORAGE_PREFIX) :]
        if alias not in getattr(settings, "STORAGES", {}):
            raise ArchiveError(
                f"Archive batch {batch.pk} was written to the storage {alias!r}, which is no longer in STORAGES."
            )
        return Location(label=batch.location, storage=storages[alias])
    return Location(label=batch.location, directory=Path(batch.location))


# -- records -----------------------------------------------------------------

TASK_RESULT_FIELDS = [f for f in TaskResult._meta.concrete_fields]


def utc_datetime(value: datetime) -> datetime:
    """An aware UTC datetime from a datetime object.

    A naive one is what the database gives with ``USE_TZ = False``: local time in
    ``TIME_ZONE`` (Django's own reading of a naive datetime), not UTC.
    """
    if timezone.is_naive(value):
        value = timezone.make_aware(value, timezone.get_default_timezone())
    return value.astimezone(UTC)


def db_datetime(value: datetime | str | None, connection: Any) -> datetime | None:
    """A datetime (or archive text) as a query parameter or column value for ``connection``.

    With ``USE_TZ = False`` SQLite and MySQL refuse aware datetimes: they get naive
    ``TIME_ZONE`` local time, the form their columns hold. PostgreSQL compares
    instants (``timestamptz``) and keeps the aware value, which stays exact even in
    the hour a daylight-saving change repeats. A naive datetime is taken to be in
    the database's form already.
    """
    parsed = as_datetime(value) if isinstance(value, str) else value
    if parsed is None or timezone.is_naive(parsed) or settings.USE_TZ or connection.features.supports_timezones:
        return parsed
    return timezone.make_naive(parsed, timezone.get_default_timezone())


def _session_in_utc(connection: Any) -> bool:
    """Whether a PostgreSQL session renders timestamps in UTC (always with ``USE_TZ``)."""
    return bool(connection.timezone_name == "UTC")


def encode_value(value: Any) -> Any:
    if isinstance(value, datetime):
        # Always six fraction digits, as PostgreSQL's to_char(.. 'US') writes them.
        return utc_datetime(value).isoformat(timespec="microseconds")
    return value


def record_from_row(row: tuple[Any, ...], *, policy: str, source: str = "database") -> dict[str, Any]:
    """A TaskResult row (values in TASK_RESULT_FIELDS order) as an archive record."""
    record = {field.attname: encode_value(value) for field, value in zip(TASK_RESULT_FIELDS, row)}
    record["source"] = source
    record["policy"] = policy
    return record


def as_datetime(value: datetime | str | None) -> datetime | None:
    """An aware UTC datetime from a datetime or an ISO 8601 / PostgreSQL text timestamp.

    Naive text is UTC (the archive format's dates); a naive datetime object came
    from the database with ``USE_TZ = False`` and is ``TIME_ZONE`` local time.
    """
    if not value:
        return None
    if isinstance(value, str):
        parsed = parse_datetime(value)
        if parsed is not None and timezone.is_naive(parsed):
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC) if parsed is not None else None
    return utc_datetime(value)


def record_date_done(record: dict[str, Any]) -> datetime | None:
    return as_datetime(record.get("date_done"))


class DueRow(NamedTuple):
    """One row read for archiving: its JSON Lines record and what the protocol needs."""

    # A named tuple, not a frozen dataclass: one is built per archived row, in the
    # reader thread, and a frozen dataclass took 3.7x as long to build (1.7 µs).

    pk: Any
    task_id: str
    date_done: datetime | str  # PostgreSQL: its text form, parsed only where needed
    bytes: int
    line: bytes  # the record, one JSON object, without the newline


def read_due(due: Q, using: str, after: Any, limit: int, policy: str, size: Any) -> list[DueRow]:
    """The next ``limit`` due rows past the (date_done, id) cursor ``after``, as records.

    Two steps: pick the rows (narrow: the ``date_done`` index and the conditions),
    then fetch and encode only those. In one query the planner may sort the whole
    due set with every record already built, which made one read of 5,000 rows
    take minutes on a million-row table.

    On PostgreSQL the server writes each record with ``row_to_json`` (every column
    as stored; dates ISO 8601 in UTC, as Django runs its connections in UTC with
    ``USE_TZ``) and sends ``date_done`` as text: building records in Python, and
    Django's Python-level timestamp loader, made reading ~1.4x slower end to end.
    Without ``USE_TZ`` the session is in ``TIME_ZONE`` and ``row_to_json`` would
    write local offsets, so the record is built column by column with the dates
    rendered in UTC (``_utc_json_sql``).
    """
    from .batches import after_cursor

    manager = TaskResult.objects.using(using)
    picked = manager.filter(due & after_cursor(after)).order_by("date_done", "id")
    extra = {"source": ArchiveBatch.Source.DATABASE.value, "policy": policy}
    connection = connections[using]
    if connection.vendor == "postgresql":
        qn = connection.ops.quote_name
        table = qn(TaskResult._meta.db_table)
        ctids = picked.values_list(RawSQL(f"{table}.ctid", []))[:limit]
        tail = ("," + json.dumps(extra, ensure_ascii=False)[1:]).encode()  # ',"source":...}'
        if _session_in_utc(connection):
            record_sql, done_sql = f"row_to_json({table})::text", f"{table}.{qn('date_done')}::text"
        else:
            record_sql, done_sql = _utc_json_sql(table, qn), _utc_text_sql(f"{table}.{qn('date_done')}")
        # The same snapshot cannot be assumed between the two steps: the fetch
        # re-applies every condition, so a row changed in between is left out
        # (and the next batch's cursor moves past it only if it is still due).
        fetched = manager.filter(due).extra(
            where=[f"{table}.ctid = ANY(ARRAY({ctids.query.sql_with_params()[0]}))"],
            params=list(ctids.query.sql_with_params()[1]),
        ).order_by("date_done", "id").values_list(
            "id", "task_id", RawSQL(done_sql, []), size, RawSQL(record_sql, []),
        )
        return [
            DueRow(pk, task_id, done, nbytes or 0, line[:-1].encode() + tail)
            for pk, task_id, done, nbytes, line in fetched
        ]
    ids = list(picked.values_list("id", flat=True)[:limit])
    if not ids:
        return []
    names = [f.attname for f in TASK_RESULT_FIELDS]
    index = {name: i for i, name in enumerate(names)}
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    result = []
    for *values, nbytes in manager.filter(due, id__in=ids).order_by("date_done", "id").values_list(*names, size):
        line = dumps(record_from_row(tuple(values), policy=policy)).encode()
        result.append(DueRow(values[index["id"]], values[index["task_id"]], values[index["date_done"]], nbytes or 0, line))
    return result


def _utc_text_sql(column: str) -> str:
    """PostgreSQL: a timestamptz column as the archive's UTC text, whatever the session's zone."""
    # "HH24:MI:SS.US" always has six fraction digits, as encode_value writes them.
    return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')"""


def _utc_json_sql(table: str, qn: Any) -> str:
    """PostgreSQL: ``row_to_json`` of a TaskResult row, with its dates in UTC text.

    The row of a correlated sub-select, its columns in the table's order and named
    as the table's: the same compact JSON ``row_to_json(table)`` writes, but with
    the dates rendered by ``_utc_text_sql``.
    """
    parts = []
    for f in TASK_RESULT_FIELDS:
        column = f"{table}.{qn(f.column)}"
        if f.get_internal_type() == "DateTimeField":
            column = _utc_text_sql(column)
        parts.append(f"{column} AS {qn(f.attname)}")
    return f"(SELECT row_to_json(r) FROM (SELECT {', '.join(parts)}) AS r)::text"


class DueReader:
    """The due rows of a scope, in (date_done, id) order, read in chunks of ``chunk`` rows.

    With ``prefetch`` the next chunk is read by a thread on a connection of its own
    while the caller archives and deletes the previous ones: building the records
    is the database's heaviest work here, and it then overlaps ours. Used only
    outside a transaction (a second connection would not see uncommitted rows) and
    not on SQLite (one writer; readers wait for its commits anyway).
    """

    _END = object()

    def __init__(self, due: Q, using: str, policy: str, size: Any, chunk: int, prefetch: bool = True):
        self.due, self.using, self.policy, self.size, self.chunk = due, using, policy, size, chunk
        connection = connections[using]
        self.prefetch = prefetch and connection.vendor != "sqlite" and not connection.in_atomic_block
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self, after: Any) -> list[DueRow]:
        return read_due(self.due, self.using, after, self.chunk, self.policy, self.size)

    def _cursor(self, row: DueRow) -> tuple[datetime | None, Any]:
        # A query parameter: in the database's form (naive local without USE_TZ).
        return db_datetime(row.date_done, connections[self.using]), row.pk

    def chunks(self) -> Iterator[list[DueRow]]:
        """Chunks until the due rows are used up (the last one may be short or empty)."""
        if not self.prefetch:
            after = None
            while True:
                rows = self._read(after)
                yield rows
                if len(rows) < self.chunk:
                    return
                after = self._cursor(rows[-1])
        self._thread = threading.Thread(target=self._produce, name="archive-reader", daemon=True)
        self._thread.start()
        while True:
            item = self._queue.get()
            if isinstance(item, BaseException):
                raise item
            if item is self._END:
                return
            yield item

    def _produce(self) -> None:
        try:
            after = None
            while not self._stop.is_set():
                rows = self._read(after)
                self._put(rows)
                if len(rows) < self.chunk:
                    break
                after = self._cursor(rows[-1])
            self._put(self._END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(exc)
        finally:
            connections[self.using].close()  # this thread's own connection

    def _put(self, item: Any) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Stop reading ahead (the consumer stopped early or is done)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


class _HashingWriter:
    """Counts and hashes the compressed bytes on their way to the file."""

    def __init__(self, raw: IO[bytes]):
        self.raw = raw
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.raw.write(data)

    def flush(self) -> None:
        self.raw.flush()


class ArchiveWriter:
    """Writes one archive object and returns its ``written`` ArchiveBatch.

    ``add`` records as they stream in (memory holds only the look-up pairs), then
    ``finish``. Nothing is in the database until ``finish`` stores the object;
    ``abort`` (or an exception) leaves nothing behind but a temporary file, removed.
    """

    def __init__(
        self,
        location: Location,
        *,
        policy: RetentionPolicy | None,
        policy_name: str,
        run: CleanupRun | None,
        source: str = ArchiveBatch.Source.DATABASE,
        holder: str = "",
    ):
        self.location = location
        self.policy = policy
        self.policy_name = policy_name
        self.run = run
        self.source = source
        self.holder = holder
        self.db = router.db_for_write(ArchiveBatch)
        self.pairs: list[tuple[str, datetime | None]] = []
        self.first: datetime | None = None
        self.last: datetime | None = None
        self._tmp = tempfile.TemporaryFile(
            dir=location.directory if location.directory is not None else None
        )
        self._hashing = _HashingWriter(self._tmp)
        self._gzip = gzip_impl.GzipFile(fileobj=self._hashing, mode="wb", compresslevel=GZIP_LEVEL, mtime=0)  # type: ignore[arg-type]
        # Compression runs in a thread of its own (zlib and hashlib release the GIL),
        # overlapping the database's work; the bounded queue keeps memory flat.
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._compressor = threading.Thread(target=self._compress, name="archive-gzip", daemon=True)
        self._compressor.start()

    def _compress(self) -> None:
        while (data := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._gzip.write(data)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                    self._error = exc

    def _put(self, data: bytes | None) -> None:
        if self._error is not None:
            raise ArchiveError(f"compressing the archive failed: {self._error}") from self._error
        self._queue.put(data)

    def _drain(self) -> None:
        """Stop the compressor after it has written everything queued."""
        if self._compressor.is_alive():
            self._queue.put(None)
            self._compressor.join()

    def __len__(self) -> int:
        return len(self.pairs)

    def add(self, record: dict[str, Any]) -> None:
        """Add one record (a dict with at least ``task_id`` and ``date_done``)."""
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()
        self.add_lines([(record["task_id"], record_date_done(record), line)])

    def add_lines(self, items: list[tuple[str, datetime | str | None, bytes]], ordered: bool = False) -> None:
        """Add encoded records: (task_id, date_done, one JSON object without newline) each.

        ``ordered``: the items come in ``date_done`` order (only the ends are looked at).
        """
        if not items:
            return
        self._put(b"\n".join(line for _tid, _done, line in items) + b"\n")
        self.pairs.extend((task_id, done) for task_id, done, _line in items)
        dates = (items[0][1], items[-1][1]) if ordered else (done for _tid, done, _line in items)
        for value in dates:
            done = as_datetime(value)
            if done is not None:
                if self.first is None or done < self.first:
                    self.first = done
                if self.last is None or done > self.last:
                    self.last = done

    def object_name(self, batch_id: int) -> str:
        # UTC, as the dates inside (``first``/``last`` are UTC): timezone.now() is
        # naive local time without USE_TZ.
        when = self.first or datetime.now(UTC)
        slug = slugify(self.policy_name) or "policy"
        stamp = f"{when:%Y%m%dT%H%M%S}"
        if self.last is not None:
            stamp += f"-{self.last:%Y%m%dT%H%M%S}"
        return f"{self.source}/{slug}/{when:%Y/%m/%d}/{slug}-{stamp}-batch{batch_id}.jsonl.gz"

    def finish(self) -> ArchiveBatch:
        """Store the object durably, then record it as ``written``: only then may its rows go."""
        self._drain()
        if self._error is not None:
            self._tmp.close()
            raise ArchiveError(f"compressing the archive failed: {self._error}") from self._error
        self._gzip.close()
        self._hashing.flush()
        size, sha = self._hashing.size, self._hashing.sha.hexdigest()
        batch = ArchiveBatch.objects.using(self.db).create(
            policy=self.policy,
            policy_name=self.policy_name,
            run=self.run,
            source=self.source,
            location=self.location.label,
            status=ArchiveBatch.Status.WRITING,
            holder=self.holder,
            records=len(self.pairs),
            # Columns: the database's form (first/last are UTC, for names and content).
            first_done=db_datetime(self.first, connections[self.db]),
            last_done=db_datetime(self.last, connections[self.db]),
        )
        try:
            name = self.object_name(batch.pk)
            # Recorded before the upload so a crash mid-upload leaves a findable object.
            ArchiveBatch.objects.using(self.db).filter(pk=batch.pk).update(name=name)
            batch.name = name
            self._tmp.seek(0)
            stored = self.location.store(name, self._tmp)
            stored_size = self.location.size(stored)
            if stored_size != size:
                raise ArchiveCorrupt(
                    f"archive object {stored!r} holds {stored_size} bytes after writing, not {size}"
                )
        except Exception as exc:
            mark_corrupt(batch, f"writing the archive object failed: {exc}")
            try:
                # A partial object is useless (no checksum was recorded for it).
                self.location.delete(batch.name)
            except Exception:  # noqa: BLE001 - the storage is failing already; the batch says so
                pass
            if isinstance(exc, ArchiveError):
                raise
            raise ArchiveError(
                f"writing archive object {batch.name!r} to {self.location.label} failed: {exc}"
            ) from exc
        finally:
            self._tmp.close()
        with transaction.atomic(using=self.db):
            _insert_lookup(batch.pk, self.pairs, self.db)
            now = timezone.now()
            flipped = ArchiveBatch.objects.using(self.db).filter(
                pk=batch.pk, status=ArchiveBatch.Status.WRITING
            ).update(status=ArchiveBatch.Status.WRITTEN, name=stored, size=size, sha256=sha, written_at=now)
            if not flipped:
                # Another run declared this batch abandoned while we wrote it: its
                # rows must not be deleted on our account.
                raise ArchiveError(f"archive batch {batch.pk} was marked abandoned while being written")
        batch.refresh_from_db(using=self.db)
        return batch

    def abort(self) -> None:
        try:
            self._drain()
            self._gzip.close()
        finally:
            self._tmp.close()


def _insert_lookup(batch_id: int, pairs: list[tuple[str, datetime | None]], using: str) -> None:
    """Insert the batch's (task_id, date_done) look-up rows."""
    connection = connections[using]
    if connection.vendor == "postgresql":
        # COPY: the ORM's bulk_create spent more time building SQL than the whole
        # rest of the batch took.
        qn = connection.ops.quote_name
        connection.ensure_connection()
        # In task id order: each insert into the (random) task id index then lands
        # next to the previous one, not anywhere in an index of every archived id.
        ordered = sorted(pairs, key=itemgetter(0))
        ids = [task_id for task_id, _done in ordered]
        dates = [done for _task_id, done in ordered]
        if _NEEDS_ESCAPE.search("".join(ids)) or not all(isinstance(d, str) for d in dates):
            ids, dates = [_copy_text(t) for t in ids], [_copy_text(d) for d in dates]
        # Task ids are nearly always plain: escape them only when one needs it.
        prefix = f"{batch_id}\t"
        rows = "".join([f"{prefix}{task_id}\t{done}\n" for task_id, done in zip(ids, dates)])
        with connection.connection.cursor() as cursor:
            columns = f"{qn('batch_id')}, {qn('task_id')}, {qn('date_done')}"
            with cursor.copy(f"COPY {qn(ArchivedResult._meta.db_table)} ({columns}) FROM STDIN") as copy:
                copy.write(rows)
        return
    # Dates read from the database are in its form already; archive dates (Redis
    # records, ``add``) are UTC and must take the result rows' form, naive local
    # time without USE_TZ, for delete_archived_rows to find the rows.
    ArchivedResult.objects.using(using).bulk_create(
        (ArchivedResult(batch_id=batch_id, task_id=tid, date_done=db_datetime(done, connection)) for tid, done in pairs),
        batch_size=LOOKUP_CHUNK,
    )


_NEEDS_ESCAPE = re.compile(r"[\\\t\n\r]")


def _copy_text(value: Any) -> str:
    """A value in COPY's text format (NULL is \\N; backslash, tab and newlines escaped)."""
    if value is None:
        return "\\N"
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
        text = text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return text


def unfinished_batches(policy_names: list[str], source: str, items: str = "rows") -> Iterator[tuple[ArchiveBatch, str]]:
    """Settle what crashed runs of these policies left; yield ``(batch, verdict)``.

    ``verdict`` is ``"finish"`` for a ``written`` batch whose object verifies: the
    caller deletes what it holds and completes it. A ``writing`` batch (its object
    may be partial; no checksum was recorded) is marked corrupt, ``"interrupted"``:
    nothing was deleted on its account. A written batch whose object fails
    verification is marked corrupt, ``"corrupt"`` (``batch.error`` says why).
    Call it under the policies' lease.
    """
    unfinished = ArchiveBatch.objects.filter(
        policy_name__in=policy_names,
        source=source,
        status__in=[ArchiveBatch.Status.WRITING, ArchiveBatch.Status.WRITTEN],
    ).order_by("id")
    for batch in unfinished:
        if batch.status == ArchiveBatch.Status.WRITING:
            mark_corrupt(
                batch,
                f"interrupted while its object was being written; none of its {items} was "
                "deleted on its account, they are archived again by a later batch",
            )
            yield batch, "interrupted"
            continue
        check = check_object(batch)
        if not check.ok:
            mark_corrupt(batch, check.problem)
            yield batch, "corrupt"
            continue
        yield batch, "finish"


def mark_corrupt(batch: ArchiveBatch, problem: str) -> None:
    ArchiveBatch.objects.using(batch._state.db).filter(pk=batch.pk).update(
        status=ArchiveBatch.Status.CORRUPT, error=problem, verified_at=timezone.now()
    )
    batch.status, batch.error = ArchiveBatch.Status.CORRUPT, problem


# -- reading and verifying -----------------------------------------------------


@dataclass(frozen=True)
class Verification:
    ok: bool
    records: int
    size: int
    sha256: str
    problem: str = ""


def check_object(batch: ArchiveBatch) -> Verification:
    """Re-read the object: its checksum, size and record count against the batch's."""
    try:
        location = location_of(batch)
        if not batch.name or not location.exists(batch.name):
            return Verification(False, 0, 0, "", f"the archive object {batch.name!r} is missing")
        sha = hashlib.sha256()
        size = lines = 0
        with location.open(batch.name) as raw:
            reader = _HashingReader(raw, sha)
            with gzip_impl.GzipFile(fileobj=reader, mode="rb") as unzipped:  # type: ignore[arg-type]
                for _line in unzipped:
                    lines += 1
            size = reader.size
    except (OSError, EOFError, gzip.BadGzipFile, ArchiveError) as exc:
        return Verification(False, 0, 0, "", f"the archive object {batch.name!r} cannot be read: {exc}")
    digest = sha.hexdigest()
    problems = []
    if batch.sha256 and digest != batch.sha256:
        problems.append(f"its SHA-256 is {digest}, not the recorded {batch.sha256}")
    if size != batch.size:
        problems.append(f"it holds {size} bytes, not the recorded {batch.size}")
    if lines != batch.records:
        problems.append(f"it holds {lines} records, not the recorded {batch.records}")
    problem = f"the archive object {batch.name!r} fails verification: " + "; ".join(problems) if problems else ""
    return Verification(not problems, lines, size, digest, problem)


class _HashingReader:
    def __init__(self, raw: IO[bytes], sha: Any):
        self.raw, self.sha, self.size = raw, sha, 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha.update(data)
        self.size += len(data)
        return data  # type: ignore[no-any-return]

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True


def verify_batch(batch: ArchiveBatch) -> Verification:
    """Check a batch's object and record the outcome (verified-at, or corrupt with why)."""
    if batch.status == ArchiveBatch.Status.WRITING:
        return Verification(False, 0, 0, "", f"archive batch {batch.pk} is still being written")
    result = check_object(batch)
    if result.ok:
        ArchiveBatch.objects.using(batch._state.db).filter(pk=batch.pk).update(verified_at=timezone.now())
    else:
        mark_corrupt(batch, result.problem)
    return result


def read_records(batch: ArchiveBatch, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """The batch's records, in order (no verification: call ``check_object`` first)."""
    location = location_of(batch)
    with location.open(batch.name) as raw, gzip_impl.GzipFile(fileobj=raw, mode="rb") as unzipped:  # type: ignore[arg-type]
        for count, line in enumerate(unzipped):
            if limit is not None and count >= limit:
                return
            yield json.loads(line)


# -- deleting what a batch holds ----------------------------------------------


def delete_archived_rows(batch: ArchiveBatch, keep: Q, using: str, chunk: int = LOOKUP_CHUNK) -> Iterator[int]:
    """Delete the rows a written batch holds, chunk by chunk; yield how many each chunk deleted.

    Each chunk is one short DELETE matching rows on (task_id, date_done) against
    the batch's look-up rows: a result that re-ran since it was archived has
    another date_done and stays. ``keep`` (holds, restore grace) is re-checked in
    the same statement.
    """
    connection = connections[using]
    qn = connection.ops.quote_name
    table = qn(TaskResult._meta.db_table)
    lookup = qn(ArchivedResult._meta.db_table)
    kept = TaskResult.objects.using(using).filter(~keep)
    where_sql, where_params = kept.query.get_compiler(connection=connection).compile(kept.query.where)
    last = 0
    ids = ArchivedResult.objects.using(using).filter(batch_id=batch.pk).order_by("id").values_list("id", flat=True)
    while True:
        upto = list(ids.filter(id__gt=last)[:chunk])
        if not upto:
            return
        sql = (
            f"DELETE FROM {table} WHERE ({table}.{qn('task_id')}, {table}.{qn('date_done')}) IN ("
            f"SELECT {qn('task_id')}, {qn('date_done')} FROM {lookup} "
            f"WHERE {qn('batch_id')} = %s AND {qn('id')} > %s AND {qn('id')} <= %s)"
        )
        params: list[Any] = [batch.pk, last, upto[-1]]
        if where_sql:
            sql += f" AND {where_sql}"
            params += list(where_params)
        with transaction.atomic(using=using), connection.cursor() as cursor:
            cursor.execute(sql, params)
            deleted = max(cursor.rowcount, 0)
        last = upto[-1]
        yield deleted


def complete_batch(batch: ArchiveBatch, deleted: int) -> None:
    ArchiveBatch.objects.using(batch._state.db).filter(pk=batch.pk, status=ArchiveBatch.Status.WRITTEN).update(
        status=ArchiveBatch.Status.COMPLETE, deleted=deleted, completed_at=timezone.now()
    )
    batch.status, batch.deleted = ArchiveBatch.Status.COMPLETE, deleted
