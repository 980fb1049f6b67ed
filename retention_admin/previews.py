"""What a policy governs and what is due, computed on demand for the admin.

Each figure is one query that walks the ``date_done`` index or stops early at a
cap, so a preview stays fast on a large result table: counts are exact up to
``PREVIEW_COUNT_CAP`` and reported as "more than" beyond it (with the planner's
estimate on PostgreSQL), instead of a full ``COUNT(*)`` over millions of rows.
A preview has a time budget that interrupts the statement running when it ends
(a rare match makes a count read the whole table): figures not computed in
time say so instead of holding the page.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import DatabaseError, connections, router, transaction
from django.db.models import Q, QuerySet, Sum
from django.utils import timezone
from django_celery_results.models import TaskResult

from .celery_config import result_expires
from .matching import Governance, Rule, row_bytes_expression
from .keep import kept_q
from .models import RetentionPolicy

logger = logging.getLogger(__name__)

# Counts stop here: "more than 10,000 results" is as useful to an operator as the
# exact figure, and bounds the cost of a count on a table of millions of rows
# (100,000 took 1.2 s per count on 2M rows in the benchmark; 10,000 about 0.15 s).
PREVIEW_COUNT_CAP = 10_000
# A count on its own (outside a preview) runs at most this long.
STATEMENT_SECONDS = 1.5
# A whole preview: the target is 2 s on 2M rows.
PREVIEW_SECONDS = 1.5
OVERLAP_CAP = 1000
# Saving a policy may wait a little longer for the count that decides whether to ask.
CONFIRM_STATEMENT_SECONDS = 5.0
# Bytes are estimated from the oldest due rows (a sample), then scaled to the count.
BYTES_SAMPLE = 2_000
EXAMPLES = 5


@dataclass(frozen=True)
class Capped:
    """A count that stopped at ``cap``: ``value`` is exact unless ``more`` or ``timed_out``."""

    value: int
    more: bool = False
    timed_out: bool = False
    estimate: int | None = None  # the planner's guess when the count stopped at the cap

    def __str__(self) -> str:
        if self.timed_out:
            return "not counted (over the time budget)"
        if self.more:
            guess = f" (about {self.estimate:,} by the planner's estimate)" if self.estimate else ""
            return f"more than {self.value:,}{guess}"
        return f"{self.value:,}"


@dataclass
class Overlap:
    policy: str
    priority: int
    results: Capped


@dataclass
class PolicyPreview:
    policy: str
    enabled: bool
    keeps_forever: bool
    cutoff: datetime | None
    governs: Capped
    due: Capped
    oldest: datetime | None
    bytes: int
    bytes_estimated: bool
    examples: list[str]
    shadowed_by: list[Overlap] = field(default_factory=list)
    shadows: list[Overlap] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Deadline:
    """A time budget shared by a page's queries; each runs with what is left.

    PostgreSQL (``statement_timeout``), MariaDB (``max_statement_time``), MySQL
    (``max_execution_time``) and SQLite (a progress handler) interrupt a
    statement that runs past it; later statements are skipped once it is spent.
    """

    def __init__(self, using: str, seconds: float):
        self.using = using
        self.end = time.monotonic() + seconds
        self.exceeded = False

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def run(self, query: Any, fallback: Any = None) -> tuple[Any, bool]:
        """(result, False), or (fallback, True) when the budget ran out first."""
        left = self.remaining()
        if left < 0.05:
            self.exceeded = True
            return fallback, True
        connection = connections[self.using]
        try:
            # A savepoint: a cancelled statement must not spoil an outer transaction.
            with transaction.atomic(using=self.using), _statement_timeout(connection, left):
                return query(), False
        except DatabaseError as exc:
            if not _cancelled(exc):
                raise
            self.exceeded = True
            return fallback, True


@contextmanager
def _statement_timeout(connection: Any, seconds: float) -> Iterator[None]:
    if connection.vendor == "postgresql":
        name, value = "statement_timeout", str(max(1, int(seconds * 1000)))
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_setting(%s), set_config(%s, %s, true)", [name, name, value])
            previous = cursor.fetchone()[0]
        yield
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config(%s, %s, true)", [name, previous])
    elif connection.vendor == "mysql":
        if connection.mysql_is_mariadb:
            name, value = "max_statement_time", round(seconds, 3)
        else:
            name, value = "max_execution_time", max(1, int(seconds * 1000))
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT @@SESSION.{name}")
            previous = cursor.fetchone()[0]
            cursor.execute(f"SET SESSION {name} = %s", [value])
        try:
            yield
        finally:
            with connection.cursor() as cursor:
                cursor.execute(f"SET SESSION {name} = %s", [previous])
    elif connection.vendor == "sqlite":
        # SQLite has no statement timeout; its progress handler can interrupt a statement.
        end = time.monotonic() + seconds
        connection.ensure_connection()
        raw = connection.connection
        raw.set_progress_handler(lambda: int(time.monotonic() > end), 10_000)
        try:
            yield
        finally:
            raw.set_progress_handler(None, 0)
    else:
        yield


def capped_count(queryset: QuerySet[Any], cap: int = PREVIEW_COUNT_CAP, deadline: Deadline | None = None) -> Capped:
    """COUNT(*) over at most ``cap + 1`` rows: the database stops scanning there."""
    deadline = deadline or Deadline(queryset.db, STATEMENT_SECONDS)
    n, timed_out = deadline.run(lambda: queryset.order_by()[: cap + 1].count())
    if timed_out:
        return Capped(0, timed_out=True)
    if n <= cap:
        return Capped(n)
    return Capped(cap, more=True, estimate=planner_estimate(queryset))


def _cancelled(exc: DatabaseError) -> bool:
    text = str(exc).lower()
    markers = (
        "statement timeout", "canceling statement", "max_statement_time",
        "maximum statement execution time", "query execution was interrupted",
        "interrupted",  # SQLite, through the progress handler
    )
    return any(marker in text for marker in markers)


def planner_estimate(queryset: QuerySet[Any]) -> int | None:
    """PostgreSQL's estimate of the rows a query returns (no scan), else None."""
    if connections[queryset.db].vendor != "postgresql":
        return None
    try:
        with transaction.atomic(using=queryset.db):
            plan = json.loads(queryset.order_by().explain(format="json"))
        return int(plan[0]["Plan"]["Plan Rows"])
    except (DatabaseError, ValueError, KeyError, IndexError, TypeError):
        logger.debug("no planner estimate", exc_info=True)
        return None


def governance_with(rule: Rule | None, replacing: str | None = None) -> Governance:
    """Today's governance with ``rule`` in place of the stored policy ``replacing``."""
    current = Governance.load()
    rules = [r for r in current.rules if r.name != replacing and (rule is None or r.name != rule.name)]
    if rule is not None:
        rules.append(rule)
    return Governance(rules)


def due_q(governance: Governance, now: datetime) -> Q:
    """Every result due under ``governance`` (holds aside), the remainder included."""
    q = Q(pk__isnull=True)  # matches nothing: the start of an OR
    for rule in governance.rules:
        cutoff = rule.cutoff(now)
        if cutoff is not None:
            q |= governance.governed_q(rule) & Q(date_done__lt=cutoff)
    expires = result_expires()
    if expires is not None:
        q |= governance.remainder_q() & Q(date_done__lt=now - expires)
    return q


def newly_due(policy: RetentionPolicy, original_name: str | None, now: datetime | None = None, cap: int = PREVIEW_COUNT_CAP) -> Capped:
    """How many results saving ``policy`` (unsaved edits) would make due that are not due now."""
    now = now or timezone.now()
    db = router.db_for_read(TaskResult)
    before = Governance.load()
    rule = Rule.from_policy(policy) if policy.enabled else None
    after = governance_with(rule, replacing=original_name)
    queryset = TaskResult.objects.using(db).filter(due_q(after, now)).exclude(due_q(before, now)).exclude(kept_q(now, using=db))
    return capped_count(queryset, cap, Deadline(db, CONFIRM_STATEMENT_SECONDS))


def preview_policy(policy: RetentionPolicy, now: datetime | None = None, seconds: float = PREVIEW_SECONDS) -> PolicyPreview:
    """Figures for one stored policy as it stands (enabled or not), within ``seconds``.

    The figures come in order of use to an operator; once the time budget is
    spent the rest say "not counted" instead of holding the page.
    """
    started = time.monotonic()
    now = now or timezone.now()
    db = router.db_for_read(TaskResult)
    deadline = Deadline(db, seconds)
    results = TaskResult.objects.using(db)
    rule = Rule.from_policy(policy)
    notes: list[str] = []
    if policy.enabled:
        governance = Governance.load()
    else:
        # What it would govern if enabled now.
        governance = governance_with(rule)
        notes.append("This policy is disabled: the figures say what it would govern if it were enabled.")
    governed = results.filter(governance.governed_q(rule))
    cutoff = rule.cutoff(now)
    governs = capped_count(governed, deadline=deadline)
    if cutoff is None:
        due = Capped(0)
        examples_qs = governed.order_by("date_done")
        size, estimated = 0, False
        notes.append("It keeps results forever: nothing it governs is ever due.")
    else:
        due_qs = governed.filter(date_done__lt=cutoff).exclude(kept_q(now, using=db))
        due = capped_count(due_qs, deadline=deadline)
        examples_qs = due_qs.order_by("date_done")
        size, estimated = _estimate_bytes(due_qs, due, deadline)
    oldest, _ = deadline.run(lambda: governed.order_by("date_done").values_list("date_done", flat=True).first())
    examples, _ = deadline.run(lambda: list(examples_qs.values_list("task_id", flat=True)[:EXAMPLES]), [])
    preview = PolicyPreview(
        policy=policy.name,
        enabled=policy.enabled,
        keeps_forever=cutoff is None,
        cutoff=cutoff,
        governs=governs,
        due=due,
        oldest=oldest,
        bytes=size,
        bytes_estimated=estimated,
        examples=examples,
        notes=notes,
    )
    _overlaps(preview, governance, rule, results, deadline)
    if deadline.exceeded:
        notes.append(
            f"Some figures were not computed within the preview's time budget ({seconds:g} s) "
            "(a policy that matches few results makes the database read the whole table to count them)."
        )
    preview.seconds = round(time.monotonic() - started, 3)
    return preview


def _estimate_bytes(due_qs: QuerySet[Any], due: Capped, deadline: Deadline) -> tuple[int, bool]:
    """Exact bytes for a small due set; a sample of the oldest rows scaled up otherwise."""
    if not due.value:
        return 0, False
    ids, _ = deadline.run(lambda: list(due_qs.order_by("date_done").values_list("pk", flat=True)[:BYTES_SAMPLE]), [])
    if not ids:
        return 0, False
    sample = TaskResult.objects.using(due_qs.db).filter(pk__in=ids)
    total = sample.aggregate(size=Sum(row_bytes_expression()))["size"] or 0
    if len(ids) == due.value and not due.more:
        return int(total), False
    # Scale the sample to the due count (the planner's estimate past the cap).
    scale_to = due.estimate if due.more and due.estimate else due.value
    return int(total / len(ids) * scale_to), True


def _overlaps(preview: PolicyPreview, governance: Governance, rule: Rule, results: QuerySet[Any], deadline: Deadline) -> None:
    """Which enabled policies take results this one's matchers select, and the reverse."""
    if rule not in governance.rules:
        return
    mine = rule.q()
    ahead = True
    for other in governance.rules:
        if other == rule:
            ahead = False
            continue
        if not may_overlap(rule, other):
            continue  # disjoint statuses or task name prefixes: no query needed
        if ahead:
            # ``other`` wins the results both select.
            count = capped_count(results.filter(mine & other.q()), cap=OVERLAP_CAP, deadline=deadline)
            if count.value or count.timed_out:
                preview.shadowed_by.append(Overlap(other.name, other.priority, count))
            if _matches_everything(other):
                preview.notes.append(
                    f"Policy {other.name!r} (priority {other.priority}) matches every result, so this one governs nothing."
                )
        else:
            count = capped_count(results.filter(governance.governed_q(rule) & other.q()), cap=OVERLAP_CAP, deadline=deadline)
            if count.value or count.timed_out:
                preview.shadows.append(Overlap(other.name, other.priority, count))


def _literal_prefix(pattern: str) -> str:
    for index, char in enumerate(pattern):
        if char in "*?[":
            return pattern[:index]
    return pattern


def may_overlap(a: Rule, b: Rule) -> bool:
    """False when no result can match both rules (statuses or task name prefixes disjoint)."""
    if a.statuses and b.statuses and not set(a.statuses) & set(b.statuses):
        return False
    if a.task_name_pattern and b.task_name_pattern:
        pa, pb = _literal_prefix(a.task_name_pattern), _literal_prefix(b.task_name_pattern)
        if not (pa.startswith(pb) or pb.startswith(pa)):
            return False
    return True


def _matches_everything(rule: Rule) -> bool:
    return not rule.task_name_pattern and not rule.statuses and rule.min_result_bytes is None


def humanize_duration(value: timedelta | None) -> str:
    """'forever', '30 minutes', '6 hours', '7 days', '1 day 12 hours'."""
    if value is None:
        return "forever"
    seconds = int(value.total_seconds())
    parts = []
    for unit, size in (("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if unit == "week" and seconds % size:
            continue  # 10 days reads better than 1 week 3 days
        amount, seconds = divmod(seconds, size)
        if amount:
            parts.append(f"{amount} {unit}{'s' if amount != 1 else ''}")
    return " ".join(parts) or "0 seconds"
