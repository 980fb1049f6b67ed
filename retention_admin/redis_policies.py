"""Which expiry a Redis result gets: the policy table, cached per process, and the verdict.

The Redis backend asks this module for a TTL every time it stores a result, so
the table is read from the database at most once per
``REDIS_POLICY_REFRESH_SECONDS`` (and never per result); the SCAN enforcer uses
the same ``lifetime`` so that what the writer sets and what the enforcer checks
cannot disagree. Holds are not part of the table: whether a result is kept is
``keep.py``'s question, asked for the ids at hand when they are judged (a cached
set of every held id would not scale, and would ignore a fresh hold).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, Final

from . import conf
from .matching import Governance, Rule

logger = logging.getLogger(__name__)

MEMO_SIZE = 10_000  # distinct (task name, status) pairs remembered per table


class SizeDependent:
    """The governing rule of a (task name, status) pair depends on the result's size."""

    def __repr__(self) -> str:
        return "SIZE_DEPENDENT"


SIZE_DEPENDENT: Final = SizeDependent()


@dataclass(frozen=True)
class PolicyTable:
    """The enabled policies in precedence order (what is held is keep.py's to say)."""

    governance: Governance
    loaded_at: float  # time.monotonic()
    # (task name, status) -> governing rule, or SIZE_DEPENDENT when a size matcher decides.
    # It lives and dies with the table: a policy change loads a new table, so a new memo.
    memo: dict[tuple[str | None, str], Rule | SizeDependent | None] = field(
        default_factory=dict, compare=False, repr=False
    )
    # Each rule without its size matcher: does a result's task name and status match it?
    unsized: tuple[Rule, ...] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "unsized", tuple(replace(rule, min_result_bytes=None) for rule in self.governance.rules)
        )

    def rule_by_name_status(self, task_name: str | None, status: str) -> Rule | SizeDependent | None:
        """The governing rule as far as task name and status tell (memoized).

        The first rule whose name and status matchers match governs unless it also
        has a size matcher; then the answer depends on the result (SIZE_DEPENDENT).
        """
        memo_key = (task_name, status)
        try:
            return self.memo[memo_key]
        except KeyError:
            pass
        found: Rule | SizeDependent | None = None
        for rule, bare in zip(self.governance.rules, self.unsized):
            if bare.matches(task_name=task_name, status=status, result=None):
                found = rule if rule.min_result_bytes is None else SIZE_DEPENDENT
                break
        if len(self.memo) >= MEMO_SIZE:
            self.memo.clear()
        self.memo[memo_key] = found
        return found

    def governing(
        self, *, task_name: str | None, status: str, result_text: Callable[[], str | None]
    ) -> Rule | None:
        """The rule governing a result; its text is built only when a size matcher decides."""
        rule = self.rule_by_name_status(task_name, status)
        if isinstance(rule, SizeDependent):
            return governing(self.governance.rules, task_name=task_name, status=status, result_text=result_text)
        return rule

    @classmethod
    def load(cls) -> PolicyTable:
        return cls(Governance.load(), time.monotonic())


@dataclass(frozen=True)
class Verdict:
    """What governs one result and how long its policy lets it live.

    ``keep_for`` None means no expiry (a keep-forever or archive policy, or a
    remainder while ``result_expires`` is None). Whether a hold or restore grace
    keeps the result is not part of it: callers ask ``keep`` for the ids at hand.
    """

    rule: Rule | None  # None: no enabled policy governs it (the remainder)
    keep_for: timedelta | None

    @property
    def archive(self) -> bool:
        return self.rule is not None and self.rule.archive


def governing(
    rules: Iterable[Rule], *, task_name: str | None, status: str, result_text: Callable[[], str | None]
) -> Rule | None:
    """Like ``Governance.governing``, but the result's text is built only if a size matcher needs it."""
    text: list[str | None] = []
    for rule in rules:
        if rule.min_result_bytes is None:
            if rule.matches(task_name=task_name, status=status, result=None):
                return rule
            continue
        if not text:
            text.append(result_text())
        if rule.matches(task_name=task_name, status=status, result=text[0]):
            return rule
    return None


def verdict(
    table: PolicyTable,
    *,
    task_name: str | None,
    status: str,
    result_text: Callable[[], str | None],
    remainder: timedelta | None,
) -> Verdict:
    """The policy governing a result and its lifetime; ``remainder`` is result_expires for the rest."""
    rule = table.governing(task_name=task_name, status=status, result_text=result_text)
    return Verdict(rule, lifetime(rule, remainder))


def lifetime(rule: Rule | None, remainder: timedelta | None) -> timedelta | None:
    """How long a result ``rule`` governs may live in Redis (None: no TTL); not for kept results."""
    if rule is None:
        return remainder
    # Archive policies get no TTL: their tier run archives, then deletes.
    return None if rule.archive else rule.keep_for


class PolicyCache:
    """The policy table for one process, refreshed at most every REDIS_POLICY_REFRESH_SECONDS.

    Thread-safe: one thread refreshes while the others keep using the table they
    have. When the database cannot be read the last table stays in use (and the
    next attempt waits a refresh period, so a database outage does not add a query
    to every result); before any table was loaded ``table()`` returns None and the
    backend stores results without a TTL, which loses nothing: the enforcer gives
    them their policy's expiry later.
    """

    def __init__(self) -> None:
        self._table: PolicyTable | None = None
        self._failed_at: float | None = None
        self._lock = threading.Lock()

    def invalidate(self) -> None:
        self._table = None
        self._failed_at = None

    def table(self) -> PolicyTable | None:
        table = self._table
        refresh = conf.get_config().redis_policy_refresh_seconds
        now = time.monotonic()
        last = max(table.loaded_at if table else -1e18, self._failed_at if self._failed_at is not None else -1e18)
        if now - last < refresh:
            return table
        # Only the first load waits for the lock; later, whoever refreshes does it
        # while the others keep the table they have.
        if not self._lock.acquire(blocking=table is None):
            return table
        try:
            if self._table is not table and self._table is not None:
                return self._table  # refreshed by another thread while we waited
            try:
                self._table = PolicyTable.load()
                self._failed_at = None
            except Exception as exc:  # noqa: BLE001 - any failure: keep storing results
                self._failed_at = time.monotonic()
                logger.warning(
                    "retention_admin: could not read retention policies (%s); %s",
                    exc,
                    "keeping the policies read before" if table else "storing results without a TTL until they can be read",
                )
            return self._table
        finally:
            self._lock.release()
