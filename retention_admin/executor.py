"""The executor: every cleanup, whatever starts it, runs through ``run_cleanup``.

It turns a selection (policies, tiers, the remainder) into batched deletions:
each batch selects at most ``batch_size`` due ids in ``date_done`` order, then
deletes them in one short statement that re-checks every condition (policy,
due date, holds), so a row that changed or was put on hold in between stays.
The due set is never loaded into memory. Each scope (a policy, the remainder)
is cleaned under its own lease, and every run leaves a ``CleanupRun``.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from datetime import datetime, timedelta
from typing import Any, NamedTuple, Protocol

from celery import states
from django.db import connections, router, transaction
from django.db.models import Count, Q, Sum, Value
from django.utils import timezone
from django_celery_results.models import ChordCounter, GroupResult, TaskResult

from . import archive, conf
from .batches import Batch, BatchDeleter
from .celery_config import result_expires
from .keep import header_task_ids, kept_q
from .leases import Lease, LeaseBusy, make_holder
from .runs import ProgressSaver, close_abandoned, progress_totals
from .matching import Governance, Rule, row_bytes_expression
from .validators import MAX_KEEP_FOR
from .models import ArchiveBatch, ChordCounterSighting, CleanupRun, RetentionPolicy, RetentionTier

logger = logging.getLogger(__name__)

REMAINDER_SCOPE = "remainder"
REDIS_SCOPE = "redis"
BACKENDS = ("database", "redis", "all")
CHORD_CHUNK = 500
# Batches in a row that may delete nothing while due rows remain (see _batches).
IDLE_BATCHES = 3
# Rows read per query while archiving (~4 MB of records): reads hold no locks, so
# they need not follow BATCH_SIZE (the deletes do); small enough to keep memory flat.
ARCHIVE_READ_ROWS = 2500


class CleanupError(ValueError):
    """A request the executor refuses before touching anything (bad selection)."""


class CleanupFailed(RuntimeError):
    """A run that started and failed; ``run`` holds the recorded CleanupRun."""

    def __init__(self, run: CleanupRun, message: str | None = None):
        super().__init__(message or (run.error.strip().splitlines()[-1] if run.error else "cleanup failed"))
        self.run = run


class Progress(Protocol):
    """Observer for a progress display; the executor never prints."""

    wants_totals: bool

    def start(self, label: str, total: int | None) -> None: ...

    def advance(self, count: int) -> None: ...

    def finish(self) -> None: ...


@dataclass
class Selection:
    """What to clean: named policies, tiers' policies, and/or the unmatched remainder.

    Nothing named means every policy plus the remainder; ``remainder=True`` alone
    (``celery.backend_cleanup``) means the remainder only.
    """

    policies: list[str] = field(default_factory=list)
    tiers: list[str] = field(default_factory=list)
    remainder: bool | None = None  # None: only when nothing else is selected

    @property
    def everything(self) -> bool:
        return not self.policies and not self.tiers and self.remainder is None

    @property
    def includes_remainder(self) -> bool:
        return self.everything or bool(self.remainder)


@dataclass
class Options:
    dry_run: bool = False
    days: int | None = None
    batch_size: int | None = None
    sleep_seconds: float | None = None
    max_runtime_seconds: float | None = None
    database: str | None = None
    trigger: str = CleanupRun.Trigger.COMMAND
    parent: CleanupRun | None = None
    started_by: Any = None
    progress: Progress | None = None
    # Which result stores: "database", "redis" (the Redis result backend), or "all"
    # (the database plus Redis when Celery's result backend is Redis).
    backend: str = "all"


@dataclass
class ScopeResult:
    matched: int = 0
    deleted: int = 0
    archived: int = 0
    bytes: int = 0


class _Part(NamedTuple):
    """One scope of a walk: the rows it governs (``matches``), due before ``cutoff``."""

    name: str
    matches: Q
    cutoff: datetime
    result: ScopeResult


class _Stop(Exception):
    """Max runtime reached: stop cleanly between batches."""


def validate(selection: Selection, options: Options) -> None:
    """Raise CleanupError for anything the run could not do; touch nothing."""
    if options.days is not None and options.days < 1:
        raise CleanupError(f"--days must be 1 or more, not {options.days}.")
    if options.days is not None and options.days > MAX_KEEP_FOR.days:
        raise CleanupError(f"--days must be at most {MAX_KEEP_FOR.days} (100 years), not {options.days}.")
    if options.batch_size is not None and options.batch_size < 1:
        raise CleanupError(f"--batch-size must be 1 or more, not {options.batch_size}.")
    if options.sleep_seconds is not None and options.sleep_seconds < 0:
        raise CleanupError(f"--sleep must be 0 or more seconds, not {options.sleep_seconds}.")
    if options.max_runtime_seconds is not None and options.max_runtime_seconds <= 0:
        raise CleanupError(
            f"--max-runtime must be more than 0 seconds, not {options.max_runtime_seconds}."
        )
    if options.database is not None and options.database not in connections.settings:
        known = ", ".join(sorted(connections.settings))
        raise CleanupError(f"Unknown database alias {options.database!r}; known aliases: {known}.")
    if options.backend not in BACKENDS:
        raise CleanupError(f"--backend must be one of {', '.join(BACKENDS)}, not {options.backend!r}.")
    if options.backend == "redis":
        from .redis_scan import redis_backend

        if redis_backend() is None:
            raise CleanupError(
                "--backend redis: no Redis result backend is configured (CELERY_RESULT_BACKEND "
                "is not a Redis URL nor retention_admin.backends.RetentionRedisBackend+redis://...)."
            )
    known_tiers = set(RetentionTier.objects.values_list("slug", flat=True))
    for slug in selection.tiers:
        if slug not in known_tiers:
            raise CleanupError(
                f"No retention tier {slug!r}; known tiers: {', '.join(sorted(known_tiers)) or 'none'}."
            )
    policies = dict(RetentionPolicy.objects.values_list("name", "enabled"))
    for name in selection.policies:
        if name not in policies:
            raise CleanupError(
                f"No retention policy named {name!r}; known policies: "
                f"{', '.join(sorted(policies)) or 'none'}."
            )
        if not policies[name]:
            raise CleanupError(
                f"Retention policy {name!r} is disabled, so it governs no result; enable it first."
            )


def run_cleanup(selection: Selection, options: Options) -> CleanupRun:
    """Validate, then run; always returns (or, on failure, raises with) a recorded run."""
    validate(selection, options)
    return _Executor(selection, options).run()


class _Executor:
    def __init__(self, selection: Selection, options: Options):
        config = conf.get_config()
        self.selection = selection
        self.options = options
        self.dry_run = options.dry_run
        self.days = options.days
        self.db = options.database or router.db_for_write(TaskResult)
        vendor = connections[self.db].vendor
        default_batch, default_sleep = conf.DATABASE_DEFAULTS.get(vendor, conf.OTHER_DATABASE_DEFAULTS)
        self.batch_size = options.batch_size or config.batch_size or default_batch
        self.sleep_seconds = next(
            v for v in (options.sleep_seconds, config.sleep_seconds, default_sleep) if v is not None
        )
        self.max_runtime = (
            options.max_runtime_seconds
            if options.max_runtime_seconds is not None
            else config.max_runtime_seconds
        )
        self.lease_seconds = config.lease_seconds
        self.archive_records = config.archive_batch_records
        self.records_db = router.db_for_write(CleanupRun)
        self.holder = make_holder()
        self.progress = options.progress
        self.now = timezone.now()
        self.started = time.monotonic()
        self.notes: list[str] = []
        self.busy: list[str] = []
        self.failures: list[str] = []
        self.stopped = False
        # A scope left with due rows for a reason other than time (the run is partial).
        self.incomplete = False
        self.lease: Lease | None = None
        # Every lease the current work holds (a sweep holds one per scope).
        self.leases: list[Lease] = []
        self.groups_deleted = self.chords_deleted = 0
        self.cleanup_run: CleanupRun | None = None
        self.kept: dict[str, Q] = {}
        # Every scope's counts as the run goes (saved now and then: runs.ProgressSaver).
        self.scoped: list[tuple[Rule, ScopeResult]] = []
        self.unmatched = ScopeResult()

    # -- bookkeeping -------------------------------------------------------
    def _selected_rules(self, governance: Governance) -> list[Rule]:
        names = set(self.selection.policies)
        tiers = set(self.selection.tiers)
        if self.selection.everything:
            return list(governance.rules)
        return [r for r in governance.rules if r.name in names or r.tier in tiers]

    def _create_run(self) -> CleanupRun:
        tier = policy = None
        if len(self.selection.tiers) == 1 and not self.selection.policies:
            tier = RetentionTier.objects.filter(slug=self.selection.tiers[0]).first()
        if len(self.selection.policies) == 1 and not self.selection.tiers:
            policy = RetentionPolicy.objects.filter(name=self.selection.policies[0]).first()
            tier = policy.tier if policy else None
        return CleanupRun.objects.using(self.records_db).create(
            trigger=self.options.trigger,
            tier=tier,
            policy=policy,
            parent=self.options.parent,
            dry_run=self.dry_run,
            database=self.db,
            holder=self.holder,
            started_by=self.options.started_by,
            started_at=self.now,
            options={
                "policies": self.selection.policies,
                "tiers": self.selection.tiers,
                "remainder": self.selection.includes_remainder,
                "days": self.days,
                "batch_size": self.batch_size,
                "sleep_seconds": self.sleep_seconds,
                "max_runtime_seconds": self.max_runtime,
            },
        )

    def run(self) -> CleanupRun:
        run = self.cleanup_run = self._create_run()
        self.save_progress = ProgressSaver(run, self.records_db)
        self.save_progress({}, force=True)  # the first heartbeat
        scoped = self.scoped
        unmatched = self.unmatched
        groups = chords = 0
        scopes = 0
        redis_report: dict[str, Any] | None = None
        error = ""
        try:
            with self._savepoints():
                closed = close_abandoned(self.records_db, self.lease_seconds)
            if closed:
                self.notes.append(f"closed {closed} earlier run(s) whose process had stopped (abandoned)")
            if not self.dry_run:
                self._refresh_sqlite_statistics()
            with self._savepoints():
                governance = Governance.load()
                for column in ("task_id", "group_id"):
                    self._held(column)
            rules = self._selected_rules(governance)
            # Plain deletion scopes share one walk of the date_done index (_sweep);
            # archive policies and keep-forever ones are handled one by one.
            sweep: list[tuple[str, Rule | None, ScopeResult]] = []
            # --backend redis: the database's results are not touched.
            for rule in rules if self.options.backend != "redis" else []:
                result = ScopeResult()
                scoped.append((rule, result))
                scopes += 1
                if rule.archive or rule.cutoff(self.now, self.days) is None:
                    self._in_lease(
                        f"policy:{rule.name}", partial(self._clean_rule, governance, rule, result), [result]
                    )
                else:
                    sweep.append((f"policy:{rule.name}", rule, result))
            if self.selection.includes_remainder and self.options.backend != "redis":
                scopes += 1
                sweep.append((REMAINDER_SCOPE, None, unmatched))
            if sweep:
                self._in_leases(
                    [scope for scope, _rule, _result in sweep],
                    partial(self._sweep, governance, sweep),
                    [result for _scope, _rule, result in sweep],
                )
            groups, chords = self.groups_deleted, self.chords_deleted
            if self.options.backend != "database":
                redis_report = self._clean_redis(governance, rules)
                scopes += redis_report is not None
        except Exception:
            error = traceback.format_exc()
            logger.exception("cleanup run %s failed", run.pk)
        if self.failures:
            # Scopes that failed without stopping the others (an archive location, Redis).
            error = "\n".join([*self.failures, error]).strip()
        # Counts as far as the run got: a failed run still reports what it deleted.
        policies = [self._policy_report(rule, result) for rule, result in scoped]
        if error:
            status = CleanupRun.Status.FAILED
        elif scopes and len(self.busy) == scopes:
            status = CleanupRun.Status.SKIPPED
        elif self.stopped or self.busy or self.incomplete:
            status = CleanupRun.Status.PARTIAL
        else:
            status = CleanupRun.Status.SUCCEEDED
        duration = round(time.monotonic() - self.started, 3)
        totals = {
            "matched": sum(p["matched"] for p in policies) + unmatched.matched,
            "deleted": sum(p["deleted"] for p in policies) + unmatched.deleted,
            "archived": sum(p["archived"] for p in policies),
            "bytes": sum(p["bytes"] for p in policies) + unmatched.bytes,
        }
        if redis_report is not None:
            for name in totals:
                totals[name] += redis_report["totals"][name]
        run.report = {
            "run": run.pk,
            "dry_run": self.dry_run,
            "status": status,
            "duration_s": duration,
            "policies": policies,
            "unmatched": {"matched": unmatched.matched, "deleted": unmatched.deleted},
            "groups": {"deleted": groups},
            "chord_counters": {"deleted": chords},
            "redis": redis_report,
            "totals": totals,
        }
        run.status = status
        run.notes = self.notes
        run.options = {**run.options, "busy": self.busy}
        run.error = error
        run.finished_at = timezone.now()
        run.duration_s = duration
        run.matched, run.deleted = totals["matched"], totals["deleted"]
        run.archived, run.bytes = totals["archived"], totals["bytes"]
        run.save(using=self.records_db)
        log = logger.error if error else logger.info
        log(
            "cleanup run %s %s: matched %s, deleted %s, %.1fs%s",
            run.pk, status, totals["matched"], totals["deleted"], duration,
            " (dry run)" if self.dry_run else "",
        )
        if not self.dry_run:
            self._snapshot_after(run)
        if error:
            raise CleanupFailed(run, " ".join(self.failures) or None)
        return run

    def _snapshot_after(self, run: CleanupRun) -> None:
        """A storage snapshot after every real run (the charts show what it freed); never fails the run."""
        from .snapshots import take_snapshot

        try:
            if connections[self.db].in_atomic_block:
                # A savepoint: a failed snapshot query must not poison the caller's transaction.
                with transaction.atomic(using=self.db):
                    take_snapshot(self.db)
            else:
                # Its reads run one by one, not as one long transaction: right after
                # a large deletion, reading past the dead index entries takes seconds.
                take_snapshot(self.db)
        except Exception:
            logger.exception("storage snapshot after cleanup run %s failed (the run itself is recorded)", run.pk)

    def _refresh_sqlite_statistics(self) -> None:
        """Give SQLite's planner statistics for the result table (cheap: sampled).

        Without them SQLite walks a policy's batches by the status index and sorts
        every matching row again for each batch; with them it walks date_done.
        """
        connection = connections[self.db]
        if connection.vendor != "sqlite":
            return
        table = connection.ops.quote_name(TaskResult._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA analysis_limit = 1000")
            cursor.execute(f"ANALYZE {table}")

    def _policy_report(self, rule: Rule, result: ScopeResult) -> dict[str, Any]:
        return {
            "name": rule.name,
            "tier": rule.tier,
            "matched": result.matched,
            "deleted": result.deleted,
            "archived": result.archived,
            "bytes": result.bytes,
        }

    def _in_lease(self, scope: str, work: Any, undo: Sequence[ScopeResult] = ()) -> None:
        self._in_leases([scope], lambda _held: work(), undo)

    def _in_leases(self, scopes: list[str], work: Any, undo: Sequence[ScopeResult] = ()) -> None:
        """Run ``work(held_scopes)`` holding the lease of every scope that is free.

        A busy scope is reported and left out; with none free nothing runs.
        Inside a caller's transaction the work runs in a savepoint: a database
        error there would otherwise leave the whole transaction unusable, and
        releasing the lease and saving the run would fail in its place. ``undo``:
        the counts to zero when that savepoint is rolled back.
        """
        if self.stopped:
            self.notes.extend(f"{scope}: not started, max runtime reached" for scope in scopes)
            return
        held: list[Lease] = []
        try:
            for scope in scopes:
                lease = Lease(scope, self.holder, self.lease_seconds, using=self.records_db)
                try:
                    lease.acquire()
                except LeaseBusy as busy:
                    self.busy.append(scope)
                    self.notes.append(f"skipped {busy}")
                    logger.warning("cleanup skipped %s", busy)
                    continue
                held.append(lease)
            if not held:
                return
            self.lease, self.leases = held[0], held
            stopped = False
            try:
                with self._savepoints():
                    try:
                        work([lease.scope for lease in held])
                    except _Stop:
                        stopped = True
            except Exception:
                if self._savepoint_aliases():
                    # Rolled back to the savepoint: what these scopes did is undone
                    # (and the caller's transaction usable again, so the lease can
                    # be released and the run recorded with the real error).
                    for result in undo:
                        result.matched = result.deleted = result.archived = result.bytes = 0
                    if REMAINDER_SCOPE in scopes:
                        self.groups_deleted = self.chords_deleted = 0
                    self.notes.append(
                        f"{', '.join(lease.scope for lease in held)}: failed inside the caller's "
                        "transaction, so what it had deleted there was rolled back"
                    )
                raise
            if stopped:
                self.stopped = True
                self.notes.extend(
                    f"{lease.scope}: stopped at max runtime; the next run continues" for lease in held
                )
        finally:
            for lease in held:
                lease.release()
            self.lease, self.leases = None, []

    def _saved_progress(self) -> None:
        """Save the counts so far (at most every few seconds): a killed run keeps them."""
        if self.dry_run:
            return
        self.save_progress(progress_totals([*(result for _rule, result in self.scoped), self.unmatched]))

    def _savepoint_aliases(self) -> list[str]:
        return [alias for alias in sorted({self.db, self.records_db}) if connections[alias].in_atomic_block]

    def _savepoints(self) -> ExitStack:
        stack = ExitStack()
        for alias in self._savepoint_aliases():
            stack.enter_context(transaction.atomic(using=alias))
        return stack

    def _renew(self) -> None:
        for lease in self.leases:
            lease.renew()

    # -- the work ---------------------------------------------------------
    def _held(self, column: str = "task_id") -> Q:
        """Rows kept whatever their policy says (keep.kept_q): evaluated inside every
        DELETE, so a hold or a restore made during the run protects at once.

        Built once per run and column, the first time at the run's start: the
        waiting chords it names are those before this run's chord pass.
        """
        if column not in self.kept:
            self.kept[column] = kept_q(self.now, using=self.db, column=column)
        return self.kept[column]

    def _clean_redis(self, governance: Governance, rules: list[Rule]) -> dict[str, Any] | None:
        """The Redis part (redis_scan.Enforcer) under its own lease; None when Redis is not configured.

        A Redis failure is recorded with ``_fail``: the database part has already
        run, and the run ends failed with the message (server named, no password).
        """
        from . import redis_scan

        backend = redis_scan.redis_backend()
        if backend is None:
            return None
        deadline = self.started + self.max_runtime if self.max_runtime is not None else None

        def renew() -> None:
            assert self.lease is not None
            self.lease.renew()

        enforcer = redis_scan.Enforcer(
            backend,
            governance,
            rules=rules,
            remainder=self.selection.includes_remainder,
            now=self.now,
            days=self.days,
            dry_run=self.dry_run,
            run=self.cleanup_run,
            holder=self.holder,
            deadline=deadline,
            tick=renew,
            progress=self.progress,
        )
        error: str | None = None

        def work() -> None:
            nonlocal error
            try:
                enforcer.run()
            except (redis_scan.RedisUnavailable, archive.ArchiveError) as exc:
                error = str(exc)
                self._fail(f"redis: {exc}")
            self.notes.extend(enforcer.notes)
            self.stopped = self.stopped or enforcer.stopped

        self._in_lease(REDIS_SCOPE, work)
        return enforcer.report(error)

    def _fail(self, message: str) -> None:
        """Record a scope's failure; the run goes on with its other scopes and ends failed."""
        logger.error("cleanup: %s", message)
        self.failures.append(message)

    def _check_time(self) -> None:
        if self.max_runtime is not None and time.monotonic() - self.started >= self.max_runtime:
            raise _Stop

    def _clean_rule(self, governance: Governance, rule: Rule, result: ScopeResult) -> None:
        cutoff = rule.cutoff(self.now, self.days)
        if cutoff is None:
            self.notes.append(f"{rule.name}: keeps results forever; nothing is due")
            return
        if rule.archive:
            self._archive_due(rule, governance.governed_q(rule) & Q(date_done__lt=cutoff) & ~self._held(), result)
            return
        self._delete_due(TaskResult, governance.governed_q(rule), cutoff, result, label=rule.name)

    def _archive_due(self, rule: Rule, due: Q, result: ScopeResult) -> None:
        """Archive-then-delete (DESIGN.md): each batch is written durably before its rows go."""
        if self.dry_run:
            result.matched, result.bytes = self._measure(due)
            return
        try:
            location = archive.configured_location()
        except archive.ArchiveUnavailable as exc:
            self._fail(f"{rule.name}: {exc} Its due results were kept.")
            return
        policy = RetentionPolicy.objects.filter(pk=rule.pk).first()
        # Batches an earlier, interrupted run of this policy left unfinished.
        self._finish_interrupted(rule, result)
        total = None
        if self.progress is not None and self.progress.wants_totals:
            total = TaskResult.objects.using(self.db).filter(due).count()
        if self.progress is not None:
            self.progress.start(f"{rule.name} (archive)", total)
        reader = archive.DueReader(due, self.db, rule.name, row_bytes_expression(), ARCHIVE_READ_ROWS)
        chunks = reader.chunks()
        leftover: list[archive.DueRow] = []
        deletions = _Deletions(self._delete_archived, [self.db, self.records_db])

        def account(finished: list[tuple[ArchiveBatch, int]]) -> None:
            for done, deleted in finished:
                result.archived += done.records
                result.deleted += deleted
                if self.progress is not None:
                    self.progress.advance(done.records)
            if finished:
                self._saved_progress()

        try:
            while True:
                self._check_time()
                writer = archive.ArchiveWriter(
                    location, policy=policy, policy_name=rule.name, run=self.cleanup_run, holder=self.holder
                )
                try:
                    nbytes = 0
                    # Whole chunks go into the object; a chunk that would overflow it
                    # is split and its rest starts the next one.
                    while len(writer) < self.archive_records:
                        chunk = leftover or next(chunks, None)
                        if not chunk:
                            break
                        room = self.archive_records - len(writer)
                        chunk, leftover = chunk[:room], chunk[room:]
                        writer.add_lines([(r.task_id, r.date_done, r.line) for r in chunk], ordered=True)
                        nbytes += sum(r.bytes for r in chunk)
                    if not len(writer):
                        writer.abort()
                        return
                    batch = writer.finish()
                except BaseException:
                    writer.abort()
                    raise
                result.matched += batch.records
                result.bytes += nbytes
                # Written and recorded: its rows may go now, while the next batch is written.
                account(deletions.submit(batch))
                if batch.records < self.archive_records:
                    return
                if self.sleep_seconds:
                    time.sleep(self.sleep_seconds)
        except archive.ArchiveError as exc:
            self._fail(f"{rule.name}: archiving failed, so its due results were kept: {exc}")
        finally:
            try:
                # The batch being deleted is finished before the lease can be released.
                account(deletions.wait())
            finally:
                deletions.close()
                reader.close()
                if self.progress is not None:
                    self.progress.finish()

    def _delete_archived(self, batch: ArchiveBatch) -> int:
        """Step 3 and 4: delete the rows a written batch holds, then mark it complete."""
        assert self.lease is not None
        # Still ours? A run that lost its lease must not delete on a batch's account
        # while the run that took over may be archiving the same rows.
        self.lease.renew(force=True)
        deleted = 0
        for count in archive.delete_archived_rows(batch, self._held(), self.db, self.batch_size):
            deleted += count
            self.lease.renew()
        archive.complete_batch(batch, deleted)
        return deleted

    def _finish_interrupted(self, rule: Rule, result: ScopeResult) -> None:
        """Settle the batches of ``rule`` that a crashed or stopped run left behind.

        ``writing``: the object may be partial and no checksum was recorded, so the
        batch is marked corrupt (none of its rows was deleted on its account).
        ``written``: the object was stored; verify it again and finish deleting.
        """
        for batch, verdict in archive.unfinished_batches([rule.name], ArchiveBatch.Source.DATABASE):
            if verdict == "interrupted":
                self.notes.append(f"{rule.name}: archive batch {batch.pk} was interrupted while writing; marked corrupt")
                continue
            if verdict == "corrupt":
                self._fail(f"{rule.name}: archive batch {batch.pk} cannot be finished: {batch.error}")
                continue
            deleted = self._delete_archived(batch)
            result.archived += batch.records
            result.deleted += deleted
            self.notes.append(
                f"{rule.name}: finished archive batch {batch.pk} left by an interrupted run ({deleted} rows deleted)"
            )

    def _sweep(
        self, governance: Governance, scopes: list[tuple[str, Rule | None, ScopeResult]], held: list[str]
    ) -> None:
        """Delete what is due in every held scope (plain policies, the remainder) in one walk.

        The scopes' due sets are disjoint (one governing policy per result), so
        one DELETE per batch can take the rows of all of them, each row counted
        for its own scope.
        """
        remainder = REMAINDER_SCOPE in held
        if remainder:
            # Chord counters first: judging them needs their header results,
            # which the remainder may be about to delete.
            self.chords_deleted = self._clean_chord_counters()
        parts: list[_Part] = []
        for scope, rule, result in scopes:
            if scope not in held:
                continue
            if rule is not None:
                cutoff = rule.cutoff(self.now, self.days)
                assert cutoff is not None  # keep-forever policies are not swept
                parts.append(_Part(rule.name, governance.governed_q(rule), cutoff, result))
                continue
            expires = self._remainder_expires()
            if expires is None:
                self.notes.append("unmatched: result_expires is None, so unmatched results are kept")
                continue
            cutoff = self.now - expires
            parts.append(_Part("unmatched", governance.remainder_q(), cutoff, result))
        if parts:
            self._delete_scopes(TaskResult, parts)
        if remainder:
            self.groups_deleted = self._clean_groups()

    def _remainder_expires(self) -> timedelta | None:
        return timedelta(days=self.days) if self.days is not None else result_expires()

    def _measure(self, due: Q) -> tuple[int, int]:
        agg = TaskResult.objects.using(self.db).filter(due).aggregate(n=Count("id"), size=Sum(row_bytes_expression()))
        return agg["n"] or 0, agg["size"] or 0

    def _delete_due(
        self, model: Any, matches: Q, cutoff: datetime, result: ScopeResult, label: str, held_column: str = "task_id"
    ) -> None:
        self._delete_scopes(model, [_Part(label, matches, cutoff, result)], held_column)

    def _delete_scopes(self, model: Any, parts: list[_Part], held_column: str = "task_id") -> None:
        """Delete the due rows of one or more disjoint scopes: what each part
        matches with ``date_done`` before its cutoff, not held."""
        held = ~self._held(held_column)
        if self.dry_run:
            for part in parts:
                due = part.matches & Q(date_done__lt=part.cutoff) & held
                if model is TaskResult:
                    part.result.matched, part.result.bytes = self._measure(due)
                else:
                    part.result.matched = model.objects.using(self.db).filter(due).count()
            return
        size = row_bytes_expression() if model is TaskResult else Value(0)
        deleter = BatchDeleter(
            model, [(part.matches, part.cutoff) for part in parts], held, self.db, self.batch_size, size
        )
        total = None
        if self.progress is not None and self.progress.wants_totals:
            total = model.objects.using(self.db).filter(deleter.due).count()
        if self.progress is not None:
            self.progress.start(", ".join(part.name for part in parts), total)
        try:
            for batch in self._batches(deleter):
                for index, (deleted, nbytes) in batch.by_label.items():
                    result = parts[index].result
                    result.matched += deleted
                    result.deleted += deleted
                    result.bytes += nbytes
                if self.progress is not None:
                    self.progress.advance(batch.deleted)
                self._saved_progress()
        finally:
            if self.progress is not None:
                self.progress.finish()

    def _batches(self, deleter: BatchDeleter) -> Iterator[Batch]:
        """Delete the due rows batch by batch; yield each batch that deleted rows.

        A cursor on date_done starts each batch where the last ended: scanning
        from the oldest row again would wade through the index entries of every
        row already deleted (dead until vacuumed), making the run quadratic. A
        row a batch skipped (changed since it was picked) was not due any more;
        the next run looks at it again.
        """
        after: tuple[datetime, Any] | None = None
        idle = 0
        while True:
            if after is not None and self.sleep_seconds:
                time.sleep(self.sleep_seconds)
            self._check_time()
            self._renew()
            batch = deleter(after)
            if batch.deleted:
                yield batch
            if batch.done:
                return
            # A batch that deleted nothing and did not move the cursor (an ordered pick
            # whose rows all changed under it) is judged again from the same place;
            # rows that keep changing are left to the next run rather than retried
            # without end. A PostgreSQL window that held nothing due still moves on.
            stuck = not batch.deleted and (batch.last is None or batch.last == after)
            idle = idle + 1 if stuck else 0
            if idle >= IDLE_BATCHES:
                self.incomplete = True
                self.notes.append(
                    "due rows kept changing while they were deleted; the next run continues"
                )
                return
            after = batch.last or after

    def _clean_groups(self) -> int:
        expires = self._remainder_expires()
        if expires is None:
            return 0
        cutoff = self.now - expires
        result = ScopeResult()
        # A hold placed on a group id keeps the group result too.
        self._delete_due(GroupResult, Q(), cutoff, result, "groups", held_column="group_id")
        if self.dry_run:
            self.notes.append(f"dry run: {result.matched} expired group results would be deleted")
        return result.deleted

    def _clean_chord_counters(self) -> int:
        """Delete ChordCounters whose chord can no longer complete.

        django-celery-results deletes a counter itself when the last header part
        reports, so a counter left over means some part never reported. One is
        deleted only when every header task has a result row, all in a ready
        state, the newest older than ``result_expires``. A header task with no row
        yet may still be queued (a backlog, an ETA, a rate limit): its counter is
        kept, because without it the chord's callback would never run (and while
        it exists, keep.kept_q keeps the header results the callback will read).
        Sightings record when each counter was first seen, for the notes.
        """
        expires = self._remainder_expires()
        if expires is None:
            return 0
        cutoff = self.now - expires
        deleted = would_delete = waiting = 0
        oldest_wait: datetime | None = None
        last_id = 0
        counters = ChordCounter.objects.using(self.db)
        sightings = ChordCounterSighting.objects.using(self.db)
        while True:
            self._check_time()
            chunk = list(
                counters.filter(id__gt=last_id).order_by("id").values("id", "group_id", "sub_tasks", "count")[
                    :CHORD_CHUNK
                ]
            )
            if not chunk:
                break
            last_id = chunk[-1]["id"]
            group_ids = [c["group_id"] for c in chunk]
            seen = dict(sightings.filter(group_id__in=group_ids).values_list("group_id", "first_seen"))
            unseen = [g for g in group_ids if g not in seen]
            if unseen and not self.dry_run:
                sightings.bulk_create(
                    [ChordCounterSighting(group_id=g, first_seen=self.now) for g in unseen],
                    ignore_conflicts=True,
                )
            header: dict[int, list[str]] = {}
            for counter in chunk:
                try:
                    header[counter["id"]] = list(header_task_ids(json.loads(counter["sub_tasks"])))
                except (ValueError, TypeError, IndexError):
                    self.notes.append(
                        f"chord counter {counter['group_id']}: unreadable sub_tasks, kept"
                    )
            all_ids = {tid for ids in header.values() for tid in ids}
            found: dict[str, tuple[str, datetime]] = {
                tid: (status, done)
                for tid, status, done in TaskResult.objects.using(self.db)
                .filter(task_id__in=all_ids)
                .values_list("task_id", "status", "date_done")
            }
            orphans = Q()
            for counter in chunk:
                ids = header.get(counter["id"])
                if not ids:
                    continue
                if any(tid not in found for tid in ids):
                    # A part with no result yet may still be queued: the chord can complete.
                    waiting += 1
                    oldest_wait = min(oldest_wait or self.now, seen.get(counter["group_id"], self.now))
                    continue
                rows = [found[tid] for tid in ids]
                if any(status not in states.READY_STATES for status, _done in rows):
                    continue
                newest = max(done for _status, done in rows)
                if newest < cutoff:
                    # Only if the count is still what we judged: no part returned since.
                    orphans |= Q(id=counter["id"], count=counter["count"])
            if not orphans:
                continue
            if self.dry_run:
                would_delete += counters.filter(orphans).count()
                continue
            self._renew()
            with transaction.atomic(using=self.db):
                deleted += counters.filter(orphans).delete()[0]
        if not self.dry_run:
            # Forget sightings of counters that are gone (completed or deleted).
            sightings.exclude(group_id__in=counters.values("group_id")).delete()
        if waiting:
            self.notes.append(
                f"{waiting} chord counters kept: a header task has no result yet "
                f"(first seen waiting {oldest_wait:%Y-%m-%d %H:%M} or earlier)"
            )
        if self.dry_run:
            self.notes.append(f"dry run: {would_delete} orphaned chord counters would be deleted")
        return deleted


class _Deletions:
    """Steps 3 and 4 of each archive batch, overlapping the writing of the next batch.

    A batch is handed over only once its object is durable and recorded
    (``written``), so the protocol is unchanged: what runs concurrently is the
    deleting of batch N and the reading, compressing and storing of batch N+1,
    which holds other rows. At most one batch is in flight; ``submit`` and
    ``wait`` return the finished ones (or raise the error their deletion met).
    The deleting thread has connections of its own, so it is used neither on
    SQLite (one writer at a time) nor inside a caller's transaction (it would not
    see the batch); there the batch is deleted in the caller's thread.
    """

    def __init__(self, delete: Callable[[ArchiveBatch], int], aliases: list[str]):
        self.delete = delete
        self.aliases = sorted(set(aliases))
        threaded = all(
            connections[a].vendor != "sqlite" and not connections[a].in_atomic_block for a in self.aliases
        )
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="archive-delete") if threaded else None
        self.pending: tuple[ArchiveBatch, Future[int]] | None = None

    def submit(self, batch: ArchiveBatch) -> list[tuple[ArchiveBatch, int]]:
        finished = self.wait()
        if self.pool is None:
            return [*finished, (batch, self.delete(batch))]
        self.pending = (batch, self.pool.submit(self.delete, batch))
        return finished

    def wait(self) -> list[tuple[ArchiveBatch, int]]:
        if self.pending is None:
            return []
        batch, future = self.pending
        self.pending = None
        return [(batch, future.result())]

    def close(self) -> None:
        if self.pool is None:
            return
        try:
            self.pool.submit(_close_connections, self.aliases).result()
        finally:
            self.pool.shutdown(wait=True)


def _close_connections(aliases: list[str]) -> None:
    for alias in aliases:
        connections[alias].close()
