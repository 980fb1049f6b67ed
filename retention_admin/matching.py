"""The policy matcher: which policy governs a result, in SQL and in Python.

Both sides are built from the same ``Rule`` so that they cannot drift: ``Rule.q()``
is the SQL filter used by cleanup, ``Rule.matches()`` the predicate used by
explain, Redis and the tests. A property test checks that they agree on every
database.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db.models import F, Func, IntegerField, Q, Value
from django.db.models.expressions import Expression
from django.db.models.functions import Coalesce
from django.db.models.lookups import GreaterThanOrEqual, Lookup

from .globs import anchored

# The TaskResult text columns whose size estimates the space a result occupies.
SIZE_COLUMNS = ("result", "traceback", "meta", "task_args", "task_kwargs")
# Fixed-width columns, ids, dates and row overhead, roughly, per row.
ROW_OVERHEAD_BYTES = 200


class OctetLength(Func):
    """Size in bytes of a text column (NULL stays NULL)."""

    function = "OCTET_LENGTH"
    output_field = IntegerField()

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        # SQLite's length() counts characters of text, bytes of a blob.
        return self.as_sql(compiler, connection, template="LENGTH(CAST(%(expressions)s AS BLOB))")


class GlobMatch(Lookup):
    """``fnmatch.fnmatchcase(column, pattern)`` in SQL: true or false, never NULL.

    A NULL column (a result stored without a task name) is false. The COALESCE
    matters beyond NOT: SQLite evaluates ``task_name IS NULL`` wrongly inside a
    ``DELETE ... RETURNING`` list (true for a NULL name), which booked nameless
    results to the wrong scope; the match itself is NULL there, and COALESCE is not.
    """

    lookup_name = "retention_glob"
    prepare_rhs = False

    def as_sql(self, compiler: Any, connection: Any) -> Any:
        lhs, lhs_params = self.process_lhs(compiler, connection)
        vendor = connection.vendor
        if vendor == "postgresql":
            sql, engine = f"COALESCE({lhs} ~ %s, false)", "postgresql"
        elif vendor == "mysql" and connection.mysql_is_mariadb:
            # REGEXP BINARY would match bytes, not characters; (?-i) in the
            # expression makes PCRE case-sensitive under a case-insensitive collation.
            sql, engine = f"COALESCE({lhs} REGEXP %s, 0)", "mariadb"
        elif vendor == "mysql":
            sql, engine = f"COALESCE(REGEXP_LIKE({lhs}, %s, 'c'), 0)", "mysql"
        else:
            # SQLite: Django registers REGEXP as Python's re.search (NULL for NULL).
            sql, engine = f"COALESCE({lhs} REGEXP %s, 0)", "python"
        return sql, (*lhs_params, anchored(self.rhs, engine))


def result_size_expression(column: str = "result") -> Expression:
    return Coalesce(OctetLength(F(column)), Value(0), output_field=IntegerField())


def row_bytes_expression() -> Expression:
    """Estimated bytes of one TaskResult row, as SQL."""
    total: Any = Value(ROW_OVERHEAD_BYTES, output_field=IntegerField())
    for column in SIZE_COLUMNS:
        total = total + result_size_expression(column)
    return total  # type: ignore[no-any-return]


def text_bytes(value: str | None) -> int:
    return len(value.encode("utf-8")) if value else 0


def row_bytes(row: Any) -> int:
    """Estimated bytes of one TaskResult row, in Python (same formula as the SQL)."""
    return ROW_OVERHEAD_BYTES + sum(text_bytes(getattr(row, c)) for c in SIZE_COLUMNS)


@dataclass(frozen=True)
class Rule:
    """What the matcher needs of a RetentionPolicy, read once per run."""

    name: str
    priority: int
    task_name_pattern: str = ""
    statuses: tuple[str, ...] = ()
    min_result_bytes: int | None = None
    keep_for: timedelta | None = None
    archive: bool = False
    tier: str = ""
    pk: int | None = None

    @classmethod
    def from_policy(cls, policy: Any) -> Rule:
        return cls(
            name=policy.name,
            priority=policy.priority,
            task_name_pattern=policy.task_name_pattern or "",
            statuses=tuple(policy.statuses or ()),
            min_result_bytes=policy.min_result_bytes,
            keep_for=policy.keep_for,
            archive=policy.archive,
            tier=policy.tier.slug if policy.tier_id else "",
            pk=policy.pk,
        )

    # -- SQL --------------------------------------------------------------
    def q(self) -> Q:
        """SQL filter selecting the results this rule's matchers match (never NULL)."""
        q = Q()
        if self.task_name_pattern:
            # Never true for a NULL name: a nameless result matches only a blank pattern.
            q &= Q(GlobMatch(F("task_name"), self.task_name_pattern))
        if self.statuses:
            q &= Q(status__in=self.statuses)
        if self.min_result_bytes is not None:
            q &= Q(_ge(result_size_expression(), self.min_result_bytes))
        if not q:
            # Match-everything must still be an expression that can be negated.
            q = Q(pk__isnull=False)
        return q

    # -- Python -----------------------------------------------------------
    def matches(self, *, task_name: str | None, status: str, result: str | None) -> bool:
        if self.task_name_pattern and (
            task_name is None or not fnmatch.fnmatchcase(task_name, self.task_name_pattern)
        ):
            return False
        if self.statuses and status not in self.statuses:
            return False
        if self.min_result_bytes is not None and text_bytes(result) < self.min_result_bytes:
            return False
        return True

    def cutoff(self, now: datetime, days: int | None = None) -> datetime | None:
        """Results done before this are due; None when this rule keeps forever."""
        if self.keep_for is None:
            return None
        return now - (timedelta(days=days) if days is not None else self.keep_for)


def _ge(expression: Expression, value: int) -> Any:
    return GreaterThanOrEqual(expression, Value(value, output_field=IntegerField()))


class Governance:
    """The enabled rules in precedence order, and who governs what."""

    def __init__(self, rules: Iterable[Rule]):
        self.rules: list[Rule] = sorted(rules, key=lambda r: (r.priority, r.name))

    @classmethod
    def load(cls, using: str | None = None) -> Governance:
        from .models import RetentionPolicy

        policies = RetentionPolicy.objects.using(using).in_precedence_order().select_related("tier")
        return cls(Rule.from_policy(p) for p in policies)

    def governed_q(self, rule: Rule) -> Q:
        """Results ``rule`` governs: it matches and no rule ahead of it does."""
        q = rule.q()
        for earlier in self.rules:
            if earlier == rule:
                return q
            q &= ~earlier.q()
        raise ValueError(f"policy {rule.name!r} is not enabled")

    def remainder_q(self) -> Q:
        """Results no enabled rule governs."""
        q = Q(pk__isnull=False)
        for rule in self.rules:
            q &= ~rule.q()
        return q

    def governing(self, *, task_name: str | None, status: str, result: str | None) -> Rule | None:
        for rule in self.rules:
            if rule.matches(task_name=task_name, status=status, result=result):
                return rule
        return None

    def by_name(self, names: Sequence[str]) -> list[Rule]:
        wanted = set(names)
        return [rule for rule in self.rules if rule.name in wanted]

