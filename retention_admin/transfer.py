"""Moving every result from one result backend to another (``migrate_results``).

Owns: naming the two sides as ``CELERY_RESULT_BACKEND`` names them (Celery's own
``by_url``); reading the source in bounded batches (Redis: SCAN with pipelined
MGET, ``redis_scan``; a database: pages in primary-key order); writing what the
destination lacks, or holds an older copy of, one short transaction per batch
(``restore.insert_records``); reading every moved result back through the destination
backend's own ``get_task_meta`` and comparing it with the source's; the counts and
checksums. Group results (``GroupResult``) move the same way.

It applies no policy, skips nothing for its age or a hold, and never changes or
deletes anything in the source: clearing the source is the operator's decision,
after verifying. Rerunning is always safe: a result the destination holds with
the same or a newer ``date_done`` is left alone, so a run killed halfway is
finished by the next one, which reports the same totals and checksums.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from celery import Celery, states
from celery.app.backends import by_url
from celery.result import result_from_tuple
from django.db import IntegrityError, connections, router, transaction
from django.utils import timezone
from django.utils.connection import ConnectionDoesNotExist
from django_celery_results.backends.database import DatabaseBackend
from django_celery_results.models import GroupResult, TaskResult

from . import archive, conf, redis_scan
from .celery_config import get_app
from .restore import insert_records

try:
    from celery.backends.redis import RedisBackend
except ImportError:  # no redis-py (the [redis] extra): database -> database only
    RedisBackend = None  # type: ignore[assignment,misc]

BATCH_SIZE = 1000
SHOWN = 20  # mismatches and unreadable ids listed in a report
LOOKUP_CHUNK = 900  # ids per IN (...): SQLite allows 999 parameters a query on old builds
WRITE_ATTEMPTS = 5
# Redis keeps a chord's progress under its group's prefix (``<id>.j`` and so on):
# live counters of chords still running, not results.
CHORD_SUFFIXES = (b".j", b".t", b".s", b".d", b".c")


class TransferError(Exception):
    """The move cannot start or go on; the message says why."""


@dataclass
class Side:
    kind: str  # "redis" or "database"
    label: str  # for messages: no credentials
    backend: Any
    alias: str | None = None  # the database side's connection


def resolve(name: str, *, role: str, alias: str | None = None, app: Celery | None = None) -> Side:
    """The backend ``name`` names (``redis://...``, ``django-db``), built as Celery builds it.

    ``alias`` is the database side's connection (ignored for Redis; default: the router's).
    """
    from .backends import RetentionDatabaseBackend
    from .cutover import RetentionCutoverBackend

    app = app or get_app()
    try:
        cls, url = cast(Any, by_url(name, app.loader))  # the stubs have it return one class
    except Exception as exc:  # Celery's own message says what it could not load
        raise TransferError(f"{role} {name!r} is not a result backend Celery can load: {exc}") from exc
    if isinstance(cls, type) and issubclass(cls, RetentionCutoverBackend):
        if role == "--from":
            raise TransferError("--from names the cut-over backend, which reads two stores; name the one to "
                                "move from: the Redis URL after 'RetentionCutoverBackend+', or django-db.")
        # Its database only: verifying through its Redis fallback would pass a missing row.
        cls, url = RetentionDatabaseBackend, None
    if RedisBackend is not None and isinstance(cls, type) and issubclass(cls, RedisBackend):
        backend = cls(app=app, url=url)
        return Side("redis", redis_scan.server_label(backend), backend)
    if not (isinstance(cls, type) and issubclass(cls, DatabaseBackend)):
        raise TransferError(f"{role} {name!r} is neither a Redis nor a database result backend; "
                            "migrate_results moves Redis -> database and database -> database.")
    alias = alias or router.db_for_write(TaskResult)
    try:
        connections[alias]
    except ConnectionDoesNotExist:
        raise TransferError(f"Unknown database alias {alias!r}; known aliases: {', '.join(connections)}.") from None
    backend = cls(app=app, url=url)
    backend.TaskModel = _Rows(TaskResult, alias, "task_id")
    backend.GroupModel = _Rows(GroupResult, alias, "group_id")
    return Side("database", f"database {alias!r}", backend, alias)


class _Rows:
    """Stands in for a DatabaseBackend's ``TaskModel``/``GroupModel``.

    The backend's own ``get_task_meta`` and ``get_group_meta`` run unchanged (their
    decoding is the point of verifying through Celery); only their one-row look-up
    is answered from rows fetched a batch at a time, on the chosen alias.
    """

    def __init__(self, model: Any, alias: str, key: str):
        self.model, self.alias, self.key = model, alias, key
        self.rows: dict[str, Any] = {}

    @property
    def _default_manager(self) -> _Rows:
        return self

    def load(self, ids: Iterable[str]) -> None:
        manager = self.model._default_manager.db_manager(self.alias)
        self.rows = {}
        for chunk in _chunks(list(ids)):
            self.rows.update((getattr(row, self.key), row) for row in manager.filter(**{f"{self.key}__in": chunk}))

    def get_task(self, task_id: str) -> Any:
        return self.rows.get(task_id) or self.model(task_id=task_id)  # unsaved: what a missing id reads as

    def get_group(self, group_id: str) -> Any:
        return self.rows.get(group_id) or self.model(group_id=group_id)


def _chunks(items: list[Any], size: int = LOOKUP_CHUNK) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- comparing ----------------------------------------------------------------------


def _when(value: Any) -> datetime | None:
    parsed = redis_scan.parse_date(value) if isinstance(value, str) else value
    return archive.utc_datetime(parsed) if isinstance(parsed, datetime) else None


def _plain(value: Any) -> Any:
    if isinstance(value, BaseException):
        return {"exc_type": type(value).__name__, "exc_module": type(value).__module__, "exc_args": list(value.args)}
    if isinstance(value, datetime):
        return _when(value).isoformat(timespec="microseconds")  # type: ignore[union-attr]
    return repr(value)


def canonical(meta: dict[str, Any]) -> str:
    """The compared fields of a result as Celery read it, as canonical JSON.

    ``date_done`` counts for finished results only: Celery dates no other, while
    the database dates every row.
    """
    status = meta.get("status")
    done = _when(meta.get("date_done")) if status in states.READY_STATES else None
    fields = {
        "status": status,
        "result": meta.get("result"),
        "args": meta.get("args"),
        "kwargs": meta.get("kwargs"),
        "date_done": done.isoformat(timespec="microseconds") if done else None,
        "traceback": meta.get("traceback"),
        "name": meta.get("name") or meta.get("task_name"),
    }
    return json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=_plain)


def _group_text(result: Any) -> str:
    return json.dumps(result.as_tuple(), separators=(",", ":"))


def _differing(ours: str, theirs: str | None) -> list[str]:
    if theirs is None:
        return ["missing from the destination"]
    if not theirs.startswith("{"):
        return [theirs if theirs.startswith("unreadable") else "result"]
    a, b = json.loads(ours), json.loads(theirs)
    return sorted(name for name in a if a[name] != b.get(name))


@dataclass
class Checksum:
    """SHA-256 of a set of (id, canonical JSON): each pair hashed, the hashes summed mod 2**256.

    The sum does not depend on the order results are met in: one pass, flat
    memory, and the two sides agree however SCAN orders the keys.
    """

    total: int = 0
    count: int = 0

    def add(self, key: str, text: str) -> None:
        digest = hashlib.sha256(key.encode() + b"\0" + text.encode()).digest()
        self.total = (self.total + int.from_bytes(digest, "big")) % (1 << 256)
        self.count += 1

    def hexdigest(self) -> str:
        return hashlib.sha256(f"{self.count}:{self.total:064x}".encode()).hexdigest()


@dataclass
class Counts:
    scanned: int = 0
    copied: int = 0  # in a dry run: would be copied
    replaced: int = 0  # of copied: the destination held an older result for the id
    already_present: int = 0
    newer_in_destination: int = 0  # kept as it is
    verified: int = 0
    source: Checksum = field(default_factory=Checksum)
    destination: Checksum = field(default_factory=Checksum)

    def as_dict(self, dry_run: bool) -> dict[str, Any]:
        data: dict[str, Any] = {k: v for k, v in self.__dict__.items() if isinstance(v, int)}
        data["checksum_source"] = self.source.hexdigest()
        data["checksum_destination"] = None if dry_run else self.destination.hexdigest()
        return data


@dataclass
class Report:
    source: str
    destination: str
    dry_run: bool
    tasks: Counts = field(default_factory=Counts)
    groups: Counts = field(default_factory=Counts)
    mismatches: int = 0
    mismatched: list[dict[str, Any]] = field(default_factory=list)  # the first SHOWN
    unreadable: int = 0
    unreadable_ids: list[str] = field(default_factory=list)  # the first SHOWN
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.unreadable

    def as_dict(self) -> dict[str, Any]:
        scalars = {k: v for k, v in self.__dict__.items() if k not in ("tasks", "groups", "seconds")}
        return {**scalars, **self.tasks.as_dict(self.dry_run), "groups": self.groups.as_dict(self.dry_run),
                "source_untouched": True, "seconds": round(self.seconds, 3)}


@dataclass
class Item:
    """One source result (or group): what Celery reads of it, and the row it becomes."""

    key: str  # task id (group id)
    canon: str
    done: datetime | None  # finished results only (see canonical)
    status: str
    record: dict[str, Any]


class _NoProgress:
    def start(self, label: str, total: int | None) -> None: ...
    def advance(self, count: int) -> None: ...
    def finish(self) -> None: ...


# -- the move -------------------------------------------------------------------------


def migrate(
    source: Side, destination: Side, *, dry_run: bool = False, batch_size: int = BATCH_SIZE, progress: Any = None
) -> Report:
    """Copy, then verify, every result of ``source`` into ``destination`` (see the module docstring)."""
    if destination.kind != "database":
        raise TransferError("The destination must be a database: migrate_results moves Redis -> database "
                            "and database -> database.")
    if source.kind == "database" and source.alias == destination.alias:
        raise TransferError(f"Source and destination are the same database ({source.alias!r}).")
    started = time.monotonic()
    report = Report(source.label, destination.label, dry_run)
    mover = _Mover(source, destination, report, dry_run, batch_size)
    try:
        from redis.exceptions import RedisError
    except ImportError:  # pragma: no cover - no Redis client, no Redis side
        RedisError = ()  # type: ignore[assignment,misc]
    try:
        mover.run(progress or _NoProgress(), groups=False)
        mover.run(_NoProgress(), groups=True)
    except RedisError as exc:
        raise TransferError(redis_scan.describe_error(source.backend, exc)) from exc
    report.seconds = time.monotonic() - started
    return report


def _insert_groups(records: list[dict[str, Any]], db: str) -> None:
    fields = ("group_id", "content_type", "content_encoding", "result")
    GroupResult.objects.using(db).bulk_create(GroupResult(**{f: r[f] for f in fields}) for r in records)
    for record in records:
        if record.get("date_done"):  # bulk_create dated it now (auto_now); a database source has the real dates
            GroupResult.objects.using(db).filter(group_id=record["group_id"]).update(
                date_created=record["date_created"], date_done=record["date_done"])


class _Mover:
    def __init__(self, source: Side, destination: Side, report: Report, dry_run: bool, size: int):
        self.source, self.report, self.dry_run, self.size = source, report, dry_run, size
        self.dest = destination.backend
        self.db: str = destination.alias  # type: ignore[assignment]
        self.progress: Any = _NoProgress()

    def run(self, progress: Any, groups: bool) -> None:
        self.progress = progress
        read = self._redis if self.source.kind == "redis" else self._database
        try:
            for batch in read(groups):
                self._move(batch, groups)
        finally:
            progress.finish()

    def _unreadable(self, key: str) -> None:
        self.report.unreadable += 1
        if len(self.report.unreadable_ids) < SHOWN:
            self.report.unreadable_ids.append(key)

    # -- reading the source ---------------------------------------------------------
    def _redis(self, groups: bool) -> Iterator[list[Item]]:
        backend = self.source.backend
        prefix = backend.group_keyprefix if groups else backend.task_keyprefix
        client = redis_scan.connect(backend)
        # DBSIZE counts every key: a total only when results have the database to themselves (no prefix).
        shared = prefix not in (b"celery-task-meta-", b"celery-taskset-meta-")
        self.progress.start(f"results from {self.source.label}", None if shared else client.dbsize())
        # SCAN, never KEYS; the values of each part of a batch are read ahead of the work on it.
        reads = redis_scan._ReadAhead(client, redis_scan.scan_pattern(prefix), conf.get_config().redis_scan_count)
        pending: list[Item] = []
        try:
            for keys, values, _pttls, _read_ms in reads:
                for key, value in zip(keys, values):
                    # None: gone since SCAN saw it, or not a string (a chord's list).
                    if value is not None and not (groups and key.endswith(CHORD_SUFFIXES)):
                        item = self._redis_item(key[len(prefix) :].decode("utf-8", "replace"), value, groups)
                        pending += [item] if item is not None else []
                self.progress.advance(len(keys))
                while len(pending) >= self.size:
                    yield pending[: self.size]
                    pending = pending[self.size :]
            if pending:
                yield pending
        finally:
            reads.close()

    def _redis_item(self, key: str, value: bytes, groups: bool) -> Item | None:
        backend = self.source.backend
        (self.report.groups if groups else self.report.tasks).scanned += 1
        try:
            raw = backend.decode(value)
            if groups:  # as RedisBackend._restore_group reads it
                result = result_from_tuple(raw["result"], backend.app)
                encoded = self.dest.encode_content(result.as_tuple())
                record = {"group_id": key, **dict(zip(("content_type", "content_encoding", "result"), encoded))}
                return Item(key, _group_text(result), None, "", record)
        except Exception:  # noqa: BLE001 - another serializer, or not a result: reported, never moved
            raw = None
        if not isinstance(raw, dict) or "status" not in raw:
            self._unreadable(f"group {key}" if groups else key)
            return None
        # The columns as archives map them; the serialized ones (left out here, as
        # encoding them twice cost a tenth of the run) as the destination backend's
        # _store_result writes them: the archive's JSON text would lose what the
        # serializer carries (dates, bytes, pickle).
        record = redis_scan.record_from_meta(backend, {**raw, "result": None, "args": None, "kwargs": None}, policy="")
        record["task_id"] = key  # the id Celery reads it by, whatever the value says
        encode = self.dest.encode_content
        record["content_type"], record["content_encoding"], record["result"] = encode(raw.get("result"))
        for column, name in (("task_args", "args"), ("task_kwargs", "kwargs")):
            record[column] = None if raw.get(name) is None else encode(raw[name])[2]
        record["meta"] = encode({k: raw[k] for k in ("children", "group_id", "parent_id") if raw.get(k) is not None})[2]
        if record["date_done"] is None:
            # Unfinished (Redis dates finished results only); the database dates every row.
            record["date_done"] = record["date_created"] = timezone.now().isoformat()
        # Celery's decode_result, split so that the record above kept the stored form.
        return self._item(key, backend.meta_from_decoded(raw), record)

    def _database(self, groups: bool) -> Iterator[list[Item]]:
        backend = self.source.backend
        model, rows = (GroupResult, backend.GroupModel) if groups else (TaskResult, backend.TaskModel)
        pages = model.objects.using(self.source.alias).order_by("pk")
        self.progress.start(f"results from {self.source.label}", pages.count())
        last = None
        while page := list((pages if last is None else pages.filter(pk__gt=last))[: self.size]):
            last = page[-1].pk
            rows.rows = {getattr(row, rows.key): row for row in page}
            self.progress.advance(len(page))
            yield [item for row in page if (item := self._database_item(row, groups)) is not None]

    def _database_item(self, row: Any, groups: bool) -> Item | None:
        backend = self.source.backend
        (self.report.groups if groups else self.report.tasks).scanned += 1
        try:
            if groups:
                result = backend.get_group_meta(row.group_id, cache=False)["result"]
                record = {f.attname: getattr(row, f.attname) for f in GroupResult._meta.concrete_fields}
                return Item(row.group_id, _group_text(result), None, "", record)
            meta = backend.get_task_meta(row.task_id, cache=False)
        except Exception:  # noqa: BLE001 - what its own backend cannot decode: reported, never moved
            self._unreadable(f"group {row.group_id}" if groups else row.task_id)
            return None
        values = tuple(getattr(row, f.attname) for f in archive.TASK_RESULT_FIELDS)
        return self._item(row.task_id, meta, archive.record_from_row(values, policy=""))

    def _item(self, key: str, meta: dict[str, Any], record: dict[str, Any]) -> Item:
        status = str(meta.get("status"))
        done = _when(meta.get("date_done")) if status in states.READY_STATES else None
        return Item(key, canonical(meta), done, status, record)

    # -- writing and verifying ------------------------------------------------------
    def _move(self, batch: list[Item], groups: bool) -> None:
        counts = self.report.groups if groups else self.report.tasks
        items = list({item.key: item for item in batch}.values())  # SCAN may return a key twice
        for attempt in range(WRITE_ATTEMPTS):
            insert, replace, present, newer = self._plan(items, groups)
            replaced = [item for item, _seen in replace]
            if self.dry_run:
                break
            try:
                replaced, moved_on = self._write(insert, replace, groups)
                newer += moved_on
                break
            except IntegrityError as exc:
                # A worker (the cut-over backend) stored one of these ids since they were
                # looked up; nothing of the batch was written: look again.
                if attempt == WRITE_ATTEMPTS - 1:
                    raise TransferError(f"A batch kept colliding with results stored meanwhile ({exc}); "
                                        "nothing of it was written. Run the command again.") from exc
        late: set[str] = set()
        if self.dry_run:
            for item in (*insert, *replaced, *present):
                counts.source.add(item.key, item.canon)
        else:
            late = self._verify([*insert, *replaced, *present], groups)
        counts.copied += sum(item.key not in late for item in (*insert, *replaced))
        counts.replaced += sum(item.key not in late for item in replaced)
        counts.already_present += sum(item.key not in late for item in present)
        counts.newer_in_destination += len(newer) + len(late)

    def _plan(self, items: list[Item], groups: bool) -> tuple[list[Item], list[tuple[Item, Any]], list[Item], list[Item]]:
        """Split a batch: missing, older in the destination (with its date), the same, newer there."""
        model, key = (GroupResult, "group_id") if groups else (TaskResult, "task_id")
        found: dict[str, tuple[Any, str]] = {}
        for chunk in _chunks([item.key for item in items]):
            rows = model.objects.using(self.db).filter(**{f"{key}__in": chunk})
            found.update((i, (done, status)) for i, done, status in rows.values_list(key, "date_done", key if groups else "status"))
        insert: list[Item] = []
        replace: list[tuple[Item, Any]] = []
        present: list[Item] = []
        newer: list[Item] = []
        for item in items:
            there = found.get(item.key)
            if there is None:
                insert.append(item)
            elif item.done is None:
                # Unfinished at the source (or a group: undated): never replaces what is there.
                (present if groups or there[1] == item.status else newer).append(item)
            elif (theirs := _when(there[0])) is None or theirs < item.done:
                replace.append((item, there[0]))
            else:
                (present if theirs == item.done else newer).append(item)
        return insert, replace, present, newer

    def _write(self, insert: list[Item], replace: list[tuple[Item, Any]], groups: bool) -> tuple[list[Item], list[Item]]:
        """One short transaction: the missing rows, and the older ones replaced (returned; the rest moved on)."""
        replaced: list[Item] = []
        moved_on: list[Item] = []
        with transaction.atomic(using=self.db):
            for item, seen in replace:
                # Only the row as it was seen: one a worker stored since is newer than this copy.
                deleted, _ = TaskResult.objects.using(self.db).filter(task_id=item.key, date_done=seen).delete()
                (replaced if deleted else moved_on).append(item)
            (_insert_groups if groups else insert_records)([item.record for item in (*insert, *replaced)], self.db)
        return replaced, moved_on

    def _verify(self, expected: list[Item], groups: bool) -> set[str]:
        """Read each result back through the destination backend; return the ids stored again since."""
        counts, late = (self.report.groups if groups else self.report.tasks), set()
        (self.dest.GroupModel if groups else self.dest.TaskModel).load(item.key for item in expected)
        for item in expected:
            theirs, done = self._read_back(item.key, groups)
            if theirs == item.canon:
                counts.verified += 1
            elif item.done is not None and done is not None and done > item.done:
                late.add(item.key)  # a worker stored it again after this batch was written: newer
                continue
            else:
                self.report.mismatches += 1
                if len(self.report.mismatched) < SHOWN:
                    name = f"group {item.key}" if groups else item.key
                    self.report.mismatched.append({"id": name, "fields": _differing(item.canon, theirs)})
            counts.source.add(item.key, item.canon)
            counts.destination.add(item.key, theirs or "")
        return late

    def _read_back(self, key: str, groups: bool) -> tuple[str | None, datetime | None]:
        """What the destination backend's own get_task_meta (get_group_meta) reads: (canonical, date_done)."""
        try:
            if groups:
                result = (self.dest.get_group_meta(key, cache=False) or {}).get("result")
                return (None if result is None else _group_text(result)), None
            meta = self.dest.get_task_meta(key, cache=False)
        except Exception as exc:  # noqa: BLE001 - reported as a mismatch
            return f"unreadable in the destination: {exc}", None
        if meta.get("status") == states.PENDING and meta.get("date_done") is None:
            return None, None  # no row
        return canonical(meta), _when(meta.get("date_done"))
