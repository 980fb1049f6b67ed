"""The keep rule, differentially: the app against an oracle written from DESIGN.md.

A retention tool is trusted only if it never removes what a policy or a hold
keeps. Hypothesis generates populations (policies, results, holds, restore
graces) and checks, for every result, that the app decides what the oracle
below decides:

(a) ``retention_admin.explain.explain`` (the Python path): governing policy,
    keep-forever, due, kept;
(b) ``cleanup_results --dry-run --json``: each policy's ``matched`` and
    ``unmatched.matched`` (the SQL path, counted);
(c) ``cleanup_results --json``: each policy's ``deleted`` (and ``archived``);
(d) the task ids left afterwards.

The ORACLE shares no code with the app: globs are ``fnmatch.fnmatchcase``,
cutoffs are plain datetime arithmetic, sizes are ``len(str.encode("utf-8"))``.
It must not import retention_admin.matching, globs, keep or redis_policies.

``DIFF_EXAMPLES`` (default 150) sets the number of generated populations of the
main property test (the archive variant runs a quarter as many). How many ran on
this database is printed (``-s``) and written to ``var/differential-<vendor>.json``
(the counts include Hypothesis's shrinking replays when a test fails). A failure
prints the minimal population, the oracle's verdict per row and a
``@reproduce_failure`` blob; ``--hypothesis-seed=N`` replays a whole run;
``DIFF_NO_SHRINK=1`` skips shrinking (a failure then costs seconds, not minutes).

Names are generated near the policies' patterns on purpose (wildcards filled with
line breaks, control characters, regex and LIKE metacharacters): checked against
the commit before the glob fix (cb7473b), 4 seeds out of 4 found both of its bugs
(line breaks in names; a nameless result booked to the remainder) in 150 examples.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import operator
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import time_machine
from celery import current_app, states
from django.conf import settings as django_settings
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.db import connection, transaction
from django.test import override_settings
from django_celery_results.models import TaskResult
from hypothesis import HealthCheck, Phase, assume, event, given, note, settings
from hypothesis import strategies as st

from retention_admin.explain import explain
from retention_admin.models import (
    ArchiveBatch,
    ArchivedResult,
    CleanupRun,
    RetentionHold,
    RetentionPolicy,
    RetentionTier,
)

ROOT = Path(__file__).resolve().parent.parent
US = timedelta(microseconds=1)
DIFF_EXAMPLES = int(os.environ.get("DIFF_EXAMPLES", "150"))
ALL_STATES = sorted(states.ALL_STATES)


# =============================================================================
# The oracle (DESIGN.md, "Policy semantics"), independent of the app's code.
# =============================================================================


@dataclass(frozen=True)
class OPolicy:
    """A policy as the oracle sees it: the stored row's fields, nothing else."""

    name: str
    priority: int
    enabled: bool
    pattern: str
    statuses: tuple[str, ...]
    min_bytes: int | None
    keep_for: timedelta | None
    archive: bool

    @classmethod
    def from_row(cls, p: RetentionPolicy) -> OPolicy:
        return cls(
            name=p.name,
            priority=p.priority,
            enabled=p.enabled,
            pattern=p.task_name_pattern or "",
            statuses=tuple(p.statuses or ()),
            min_bytes=p.min_result_bytes,
            keep_for=p.keep_for,
            archive=p.archive,
        )


@dataclass(frozen=True)
class ORow:
    task_id: str
    task_name: str | None
    status: str
    result: str | None
    date_done: datetime


@dataclass(frozen=True)
class Decision:
    governing: str | None  # policy name; None: the remainder (result_expires)
    keep: timedelta | None  # None: never due
    due: bool
    kept: bool  # hold or restore grace

    @property
    def goes(self) -> bool:
        return self.due and not self.kept


def oracle_bytes(text: str | None) -> int:
    return len(text.encode("utf-8")) if text is not None else 0


def oracle_matches(policy: OPolicy, row: ORow) -> bool:
    """Every matcher matches: a blank pattern any name (NULL too), else fnmatchcase
    of a stored name; empty statuses any status; no size limit any size."""
    name_ok = not policy.pattern or (
        row.task_name is not None and fnmatch.fnmatchcase(row.task_name, policy.pattern)
    )
    status_ok = not policy.statuses or row.status in policy.statuses
    size_ok = policy.min_bytes is None or oracle_bytes(row.result) >= policy.min_bytes
    return name_ok and status_ok and size_ok


def oracle_governing(policies: list[OPolicy], row: ORow) -> OPolicy | None:
    for policy in sorted((p for p in policies if p.enabled), key=lambda p: (p.priority, p.name)):
        if oracle_matches(policy, row):
            return policy
    return None


def oracle_result_expires() -> timedelta | None:
    """Celery's result_expires as Django settings give it (CELERY_ namespace), default 1 day."""
    value = getattr(django_settings, "CELERY_RESULT_EXPIRES", timedelta(days=1))
    if value is None or value == 0:
        return None
    if isinstance(value, (int, float)):
        return timedelta(seconds=value)
    return value


def oracle_kept_ids(
    holds: list[tuple[str, datetime | None]],
    graces: list[tuple[str, datetime | None]],
    now: datetime,
) -> set[str]:
    """Task ids an active hold names, or that an archive batch in restore grace holds."""
    kept = {task_id for task_id, until in holds if until is None or until > now}
    kept |= {
        task_id for task_id, grace_until in graces if grace_until is not None and grace_until > now
    }
    return kept


def oracle_decide(
    policies: list[OPolicy], row: ORow, kept_ids: set[str], now: datetime, expires: timedelta | None
) -> Decision:
    policy = oracle_governing(policies, row)
    keep = policy.keep_for if policy is not None else expires
    due = keep is not None and row.date_done < now - keep
    return Decision(policy.name if policy else None, keep, due, row.task_id in kept_ids)


# =============================================================================
# Generated populations.
# =============================================================================

PG_NUL_FREE = "postgresql"  # PostgreSQL text cannot hold U+0000


def _vendor() -> str:
    return connection.vendor


# Characters that break naive SQL/regex translations of globs.
SPECIAL = (
    "\n\r\t \x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2028\u2029\u3000\x01\x07\x1b\x7f"
    ".*?[]^$%_\\'\"()|+{}-:@/!#,;=~&<>`"
    "aZ0xé\u00dfΩжあ😀\u0301\ufeff\u200b\U0010fffd"
)
# Line breaks, "\n" the most (the one regex engines treat specially), then the rest.
NEWLINES = ["\n", "\n", "\n\n", "\r\n", "\r", "\x85", "\u2028", "\u2029", "\x0b", "\x0c"]
STEMS = [
    "critical.",
    "api.",
    "reports.",
    "tasks.work",
    "tasks.",
    "a",
    "x",
    "%",
    "_",
    "café.",
    "😀.",
]
# Single characters a pattern may use literally (printable, no whitespace, no [ ]).
PATTERN_LITERALS = list(".%_\\$^(){}|+'\"!#,;=~&<>`-:@/acxAZ01") + [
    "é",
    "ß",
    "Ω",
    "ж",
    "あ",
    "😀",
    "\u0301",
]
PATTERN_STEMS = [
    "critical.",
    "api.",
    "reports.",
    "tasks.",
    "x.",
    "%.",
    "a_b",
    "50%",
    "(v)",
    "$x^",
    "\\d",
    "é.",
    "😀",
]
PATTERN_WILDCARDS = ["*", "?", "**", "*?", "?*"]
PATTERN_SETS = [
    "[a-c]",
    "[!a-c]",
    "[0-9_]",
    "[.-]",
    "[!.]",
    "[/@:]",
    "[A-Z]",
    "[!x-z0-9]",
    "[x]",
    "[!x]",
]
POLICY_NAMES = ["alpha", "Beta", "gamma", "_delta", "Zeta", "eta-2", "théta", "kappa"]
KEEP_FORS = [
    None,  # keep forever: the case where a wrong governing policy loses data
    None,
    None,
    timedelta(minutes=1),
    timedelta(minutes=30),
    timedelta(hours=6),
    timedelta(days=1),
    timedelta(days=1, microseconds=1),
    timedelta(days=7),
    timedelta(days=30),
    timedelta(hours=6, seconds=1, microseconds=999_999),
    timedelta(days=36525),
]
MIN_BYTES = [None, None, 0, 1, 2, 3, 4, 5, 8, 13, 40]
NOWS = [
    datetime(2024, 3, 10, 12, 0, 0, tzinfo=UTC),  # no fraction: SQLite's plainest text form
    datetime(2024, 3, 10, 12, 0, 0, 123_457, tzinfo=UTC),
    datetime(2025, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
]
# Multi-byte UTF-8: bytes != characters.
BYTE_CHARS = {1: "a\n{", 2: "éжß", 3: "€あ\u2028", 4: "😀\U0010fffd"}


@dataclass(frozen=True)
class PolicySpec:
    name: str
    priority: int
    pattern: str
    statuses: tuple[str, ...]
    min_bytes: int | None
    keep_for: timedelta | None
    enabled: bool = True
    archive: bool = False


@dataclass(frozen=True)
class RowSpec:
    task_id: str
    task_name: str | None
    status: str
    result: str | None
    date_done: datetime


@dataclass(frozen=True)
class Population:
    now: datetime
    keep_seeded: bool
    policies: tuple[PolicySpec, ...]
    rows: tuple[RowSpec, ...]
    holds: tuple[tuple[str, datetime | None], ...]  # (task_id, until)
    graces: tuple[tuple[datetime | None, tuple[str, ...]], ...]  # (grace_until, task ids)
    batch_size: int | None


def one_char(vendor: str) -> st.SearchStrategy[str]:
    excluded = ["\x00"] if vendor == PG_NUL_FREE else []
    special = [c for c in SPECIAL] + ([] if vendor == PG_NUL_FREE else ["\x00"])
    return st.one_of(
        st.sampled_from(special),
        st.characters(exclude_categories=("Cs",), exclude_characters=excluded),
    )


def noise(vendor: str, max_size: int = 4) -> st.SearchStrategy[str]:
    return st.one_of(
        st.lists(one_char(vendor), max_size=max_size).map("".join),
        st.sampled_from(NEWLINES),
    )


@st.composite
def patterns(draw: Any) -> str:
    if draw(st.integers(0, 2)) == 0:
        return ""  # blank: any task name, and the only pattern a nameless result matches
    atoms = st.one_of(
        st.sampled_from(PATTERN_STEMS),
        st.sampled_from(PATTERN_WILDCARDS),
        st.sampled_from(PATTERN_WILDCARDS),
        st.sampled_from(PATTERN_SETS),
        st.sampled_from(PATTERN_LITERALS),
    )
    return "".join(draw(st.lists(atoms, min_size=1, max_size=5)))[:255]


def _set_members(body: str) -> list[str]:
    members, i = [], 0
    while i < len(body):
        if i + 2 < len(body) and body[i + 1] == "-" and body[i] != "-":
            low, high = ord(body[i]), ord(body[i + 2])
            members.extend(chr(c) for c in range(low, high + 1))
            i += 3
        else:
            members.append(body[i])
            i += 1
    return members or ["x"]


@st.composite
def instantiate(draw: Any, pattern: str, vendor: str) -> str:
    """A name the pattern (nearly) matches: wildcards filled with nasty characters."""
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        # Wildcards filled with line breaks half of the time: where translations go wrong.
        if char == "*":
            out.append(
                draw(
                    st.one_of(
                        noise(vendor, 3),
                        st.tuples(
                            noise(vendor, 1), st.sampled_from(NEWLINES), noise(vendor, 1)
                        ).map("".join),
                    )
                )
            )
        elif char == "?":
            out.append(
                draw(
                    st.one_of(
                        one_char(vendor), st.sampled_from([c for c in NEWLINES if len(c) == 1])
                    )
                )
            )
        elif char == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            body = pattern[i + 1 : end]
            members = _set_members(body.removeprefix("!"))
            out.append(draw(st.one_of(st.sampled_from(members), one_char(vendor))))
            i = end + 1
            continue
        else:
            out.append(char)
        i += 1
    return "".join(out)


@st.composite
def mutate(draw: Any, name: str, vendor: str) -> str:
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        how = draw(
            st.sampled_from(
                ["nl-end", "nl-end", "append", "prepend", "insert", "replace", "delete", "swapcase"]
            )
        )
        pos = draw(st.integers(0, len(name)))
        if how == "append":
            name = name + draw(noise(vendor, 3))
        elif how == "prepend":
            name = draw(noise(vendor, 3)) + name
        elif how == "insert":
            name = name[:pos] + draw(one_char(vendor)) + name[pos:]
        elif how == "replace" and name:
            pos = min(pos, len(name) - 1)
            name = name[:pos] + draw(one_char(vendor)) + name[pos + 1 :]
        elif how == "delete" and name:
            pos = min(pos, len(name) - 1)
            name = name[:pos] + name[pos + 1 :]
        elif how == "swapcase":
            name = name.swapcase()
        elif how == "nl-end":
            name = name + draw(st.sampled_from(NEWLINES))
    return name


def near_names(pattern: str, vendor: str) -> st.SearchStrategy[str]:
    return (
        instantiate(pattern, vendor)
        .flatmap(lambda name: mutate(name, vendor))
        .map(lambda name: name[:255])
    )


@st.composite
def task_names(draw: Any, pattern_pool: list[str], vendor: str) -> str | None:
    kind = draw(
        st.sampled_from(
            [
                "none",
                "none",
                "empty",
                "near",
                "near",
                "near",
                "near",
                "stem",
                "infix",
                "unicode",
                "long",
            ]
        )
    )
    event(f"task name kind: {kind}")
    if kind == "none":
        return None
    if kind == "empty":
        return ""
    stems = STEMS + [p.split("*")[0].split("?")[0].split("[")[0] for p in pattern_pool if p]
    if kind == "near" and pattern_pool:
        name = draw(near_names(draw(st.sampled_from(pattern_pool)), vendor))
    elif kind in ("stem", "near"):
        name = draw(st.sampled_from(stems)) + draw(noise(vendor))
    elif kind == "infix":
        name = draw(noise(vendor, 3)) + draw(st.sampled_from(stems)) + draw(noise(vendor, 3))
    elif kind == "long":
        base = draw(st.sampled_from(stems)) + draw(noise(vendor, 2))
        name = (base + draw(st.sampled_from(["x", "é", "😀"])) * 255)[: draw(st.integers(250, 255))]
    else:
        name = draw(st.text(one_char(vendor), max_size=20))
    return name[:255]


def text_of_bytes(draw: Any, size: int) -> str:
    """A text of exactly ``size`` UTF-8 bytes, mostly of multi-byte characters."""
    out, left = [], size
    while left > 0:
        width = draw(st.integers(1, min(4, left)))
        out.append(draw(st.sampled_from(BYTE_CHARS[width])))
        left -= width
    text = "".join(out)
    assert oracle_bytes(text) == max(size, 0)
    return text


@st.composite
def results(draw: Any, thresholds: list[int], vendor: str) -> str | None:
    kind = draw(st.sampled_from(["null", "empty", "edge", "edge", "edge", "text"]))
    if kind == "null":
        return None
    if kind == "empty":
        return ""
    if kind == "edge" and thresholds:
        target = draw(st.sampled_from(thresholds)) + draw(st.sampled_from([-1, 0, 0, 1]))
        return text_of_bytes(draw, max(target, 0))
    return draw(st.text(one_char(vendor), max_size=12))


@st.composite
def dates(draw: Any, now: datetime, keeps: list[timedelta]) -> datetime:
    """At a cutoff or 1 µs either side; long gone; just done; or anywhere in the last year."""
    kind = draw(st.sampled_from(["cutoff", "cutoff", "cutoff", "old", "new", "any"]))
    if kind == "cutoff" and keeps:
        keep = draw(st.sampled_from(keeps))
        return now - keep + draw(st.sampled_from([-US, timedelta(0), US]))
    if kind == "old":  # past every cutoff but keep-forever's
        return now - timedelta(
            days=draw(st.integers(400, 36600)), microseconds=draw(st.integers(0, 999_999))
        )
    if kind == "new":
        return now - timedelta(microseconds=draw(st.integers(-(10**6), 10**6)))
    return now - timedelta(microseconds=draw(st.integers(-3600 * 10**6, 400 * 86400 * 10**6)))


@st.composite
def moments(draw: Any, now: datetime) -> datetime | None:
    """A hold's ``until`` or a batch's ``grace_until``: none, exactly now, ±1 µs, ±1 day."""
    return draw(
        st.sampled_from(
            [None, now, now + US, now - US, now + timedelta(days=1), now - timedelta(days=1)]
        )
    )


@st.composite
def probes(
    draw: Any, policy: PolicySpec, pattern_pool: list[str], thresholds: list[int], vendor: str
) -> tuple[str | None, str, str | None]:
    """A row near ``policy``: a name it nearly matches, its other matchers mostly met."""
    if policy.pattern:
        name = draw(near_names(policy.pattern, vendor))
    else:  # a catch-all: results stored without a name belong here, if to any policy
        name = draw(st.one_of(st.none(), task_names(pattern_pool, vendor)))
    if policy.statuses and draw(st.integers(0, 4)) > 0:
        status = draw(st.sampled_from(policy.statuses))
    else:
        status = draw(st.sampled_from(ALL_STATES))
    if policy.min_bytes is not None and draw(st.integers(0, 4)) > 0:
        result = text_of_bytes(draw, policy.min_bytes + draw(st.sampled_from([0, 1, 0, 2, -1])))
    else:
        result = draw(results(thresholds, vendor))
    return name, status, result


@st.composite
def populations(draw: Any, allow_archive: bool) -> Population:
    vendor = _vendor()
    now = draw(st.sampled_from(NOWS))

    @st.composite
    def policy_specs(draw: Any, enabled: bool) -> PolicySpec:
        pattern = draw(patterns())
        return draw(
            st.builds(
                PolicySpec,
                name=st.sampled_from(POLICY_NAMES),
                # Catch-alls mostly behind the pattern policies, as set up in practice
                # (else they shadow every pattern), sometimes ahead or tied.
                priority=st.integers(0, 3) if pattern else st.sampled_from([3, 2, 3, 0, 1]),
                pattern=st.just(pattern),
                statuses=st.lists(st.sampled_from(ALL_STATES), max_size=3, unique=True).map(tuple),
                min_bytes=st.sampled_from(MIN_BYTES),
                keep_for=st.sampled_from(KEEP_FORS),
                enabled=st.just(enabled),
                archive=st.sampled_from([False] * 4 + [True]) if allow_archive else st.just(False),
            )
        )

    by_name = operator.attrgetter("name")
    policies = draw(st.lists(policy_specs(True), min_size=1, max_size=4, unique_by=by_name))
    taken = {p.name for p in policies}
    policies += [
        p
        for p in draw(st.lists(policy_specs(False), max_size=2, unique_by=by_name))
        if p.name not in taken
    ]
    pattern_pool = [p.pattern for p in policies if p.pattern]
    thresholds = sorted({p.min_bytes for p in policies if p.min_bytes is not None})
    expires = oracle_result_expires()
    keeps = [p.keep_for for p in policies if p.keep_for is not None] + (
        [expires] if expires else []
    )
    # Every policy gets rows it (nearly) matches: names with wildcards filled
    # with line breaks and the like, mostly with a status and a size it takes too;
    # then rows of every other kind.
    drafts: list[tuple[str | None, str, str | None]] = []
    for policy in policies:
        drafts += draw(
            st.lists(probes(policy, pattern_pool, thresholds, vendor), min_size=1, max_size=2)
        )
    drafts += draw(
        st.lists(
            st.tuples(
                task_names(pattern_pool, vendor),
                st.sampled_from(ALL_STATES),
                results(thresholds, vendor),
            ),
            min_size=0 if drafts else 1,
            max_size=10,
        )
    )
    rows = [
        RowSpec(
            task_id=f"r{i:03d}",
            task_name=name,
            status=status,
            result=result,
            date_done=draw(dates(now, keeps)),
        )
        for i, (name, status, result) in enumerate(drafts)
    ]
    ids = [r.task_id for r in rows] + ["absent-1"]
    holds = tuple(draw(st.lists(st.tuples(st.sampled_from(ids), moments(now)), max_size=3)))
    graces = tuple(
        draw(
            st.lists(
                st.tuples(
                    moments(now), st.lists(st.sampled_from(ids), min_size=1, max_size=4).map(tuple)
                ),
                max_size=2,
            )
        )
    )
    return Population(
        now=now,
        keep_seeded=draw(st.booleans()),
        policies=tuple(policies),
        rows=tuple(rows),
        holds=holds,
        graces=graces,
        batch_size=draw(st.sampled_from([None, None, 1, 2, 3])),
    )


# =============================================================================
# Putting a population in the database, and asking the app.
# =============================================================================


class _Rollback(Exception):
    """Raised at the end of each example: its rows go with the savepoint."""


def store(population: Population) -> None:
    if not population.keep_seeded:
        RetentionPolicy.objects.update(enabled=False)
    tier = RetentionTier.objects.get(slug="daily")
    for spec in population.policies:
        policy = RetentionPolicy(
            name=spec.name,
            enabled=spec.enabled,
            priority=spec.priority,
            tier=tier,
            task_name_pattern=spec.pattern,
            statuses=list(spec.statuses),
            min_result_bytes=spec.min_bytes,
            keep_for=spec.keep_for,
            archive=spec.archive,
        )
        try:
            policy.full_clean()
        except ValidationError as exc:
            note(f"policy {spec.name!r} refused: {exc}")
            assume(False)
        policy.save()
    TaskResult.objects.bulk_create(
        TaskResult(
            task_id=row.task_id,
            task_name=row.task_name,
            status=row.status,
            result=row.result,
            content_type="application/json",
            content_encoding="utf-8",
        )
        for row in population.rows
    )
    # date_done is auto_now: set it afterwards, as conftest's ResultFactory does.
    for row in population.rows:
        TaskResult.objects.filter(task_id=row.task_id).update(
            date_done=row.date_done, date_created=row.date_done
        )
    for task_id, until in population.holds:
        RetentionHold.objects.create(task_id=task_id, reason="differential", until=until)
    for grace_until, task_ids in population.graces:
        batch = ArchiveBatch.objects.create(
            policy_name="restored-elsewhere",
            status=ArchiveBatch.Status.RESTORED,
            records=len(task_ids),
            grace_until=grace_until,
            restored_at=population.now - timedelta(hours=1),
        )
        for task_id in task_ids:
            ArchivedResult.objects.create(
                batch=batch, task_id=task_id, date_done=population.now - timedelta(days=90)
            )


def stored_rows() -> list[ORow]:
    """The rows as the database holds them: what the oracle judges is what was stored."""
    return [
        ORow(*values)
        for values in TaskResult.objects.order_by("task_id").values_list(
            "task_id", "task_name", "status", "result", "date_done"
        )
    ]


def cleanup_json(*args: str) -> dict[str, Any]:
    out = StringIO()
    call_command("cleanup_results", "--json", "--no-progress", *args, stdout=out, stderr=StringIO())
    return json.loads(out.getvalue())


def ids_left() -> set[str]:
    return set(TaskResult.objects.values_list("task_id", flat=True))


def describe(row: ORow, decision: Decision | None = None) -> str:
    text = f"{row.task_id} name={row.task_name!r} status={row.status} result_bytes={oracle_bytes(row.result)} done={row.date_done.isoformat()}"
    if decision is not None:
        text += f" -> oracle: policy={decision.governing!r} due={decision.due} kept={decision.kept}"
    return text


# =============================================================================
# Counting how many generated cases ran on this database.
# =============================================================================

COUNTS: Counter[str] = Counter()
ENGINE: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def record_counts() -> Iterator[None]:
    started = time.monotonic()
    COUNTS.clear()
    yield
    vendor = connection.vendor
    summary = {
        "vendor": vendor,
        "engine": ENGINE.get("display_name", vendor),
        "diff_examples_setting": DIFF_EXAMPLES,
        "examples_run": {k[len("run:") :]: v for k, v in COUNTS.items() if k.startswith("run:")},
        "examples_completed": {
            k[len("ok:") :]: v for k, v in COUNTS.items() if k.startswith("ok:")
        },
        "rows_judged": COUNTS["rows"],
        "seconds": round(time.monotonic() - started, 1),
    }
    (ROOT / "var").mkdir(exist_ok=True)
    (ROOT / "var" / f"differential-{vendor}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n[differential] {json.dumps(summary)}")


@pytest.fixture
def quiet_logs() -> Iterator[None]:
    """Two INFO lines per cleanup run would bury the output; warnings still show."""
    logger = logging.getLogger("retention_admin")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


@pytest.fixture
def archive_root() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="ra-diff-archive-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


# =============================================================================
# The property.
# =============================================================================

PROPERTY = settings(
    max_examples=DIFF_EXAMPLES,
    deadline=None,
    derandomize=False,
    print_blob=True,
    # DIFF_NO_SHRINK=1 reports the first failing population as found: shrinking one
    # can take Hypothesis's full five minutes per test on a slow database.
    phases=[p for p in Phase if not (os.environ.get("DIFF_NO_SHRINK") and p is Phase.shrink)],
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)


def check_population(population: Population, archive_root: Path | None, name: str) -> None:
    COUNTS[f"run:{name}"] += 1
    ENGINE.setdefault("display_name", connection.display_name)
    archive_dir = None
    if archive_root is not None:
        archive_dir = Path(tempfile.mkdtemp(dir=archive_root))
    try:
        with (
            time_machine.travel(population.now, tick=False),
            override_settings(
                RETENTION_ADMIN={"ARCHIVE_DIR": str(archive_dir)} if archive_dir else {}
            ),
            transaction.atomic(),
        ):
            _check(population)
            raise _Rollback
    except _Rollback:
        pass
    COUNTS[f"ok:{name}"] += 1


def _check(population: Population) -> None:
    from django.utils import timezone

    now = timezone.now()
    assert now == population.now
    # Precondition: Celery's result_expires is what the settings say (a test that
    # leaked a change would make the oracle judge by another rule than the app).
    celery_expires = current_app.conf.result_expires
    if isinstance(celery_expires, (int, float)):
        celery_expires = timedelta(seconds=celery_expires)
    assert (celery_expires or None) == oracle_result_expires(), (
        f"result_expires is {celery_expires!r}"
    )
    store(population)

    rows = stored_rows()
    generated = {r.task_id: r for r in population.rows}
    # Storage fidelity: the database gave back what was generated (else the oracle
    # would judge something else than the app).
    for row in rows:
        spec = generated[row.task_id]
        assert (row.task_name, row.status, row.result, row.date_done) == (
            spec.task_name,
            spec.status,
            spec.result,
            spec.date_done,
        ), f"{connection.vendor} did not store {spec!r} faithfully: {row!r}"
    COUNTS["rows"] += len(rows)

    policies = [OPolicy.from_row(p) for p in RetentionPolicy.objects.all()]
    enabled = sorted((p for p in policies if p.enabled), key=lambda p: (p.priority, p.name))
    expires = oracle_result_expires()
    holds = list(RetentionHold.objects.values_list("task_id", "until"))
    graces = list(ArchivedResult.objects.values_list("task_id", "batch__grace_until"))
    kept_ids = oracle_kept_ids(holds, graces, now)
    decisions = {row.task_id: oracle_decide(policies, row, kept_ids, now, expires) for row in rows}
    by_id = {row.task_id: row for row in rows}
    goes = Counter(d.governing for d in decisions.values() if d.goes)
    oracle_counts = {p.name: goes.get(p.name, 0) for p in enabled}
    oracle_unmatched = goes.get(None, 0)
    oracle_left = {task_id for task_id, d in decisions.items() if not d.goes}
    event(f"rows that go: {min(sum(goes.values()), 5)}{'+' if sum(goes.values()) >= 5 else ''}")
    patterned = {p.name for p in enabled if p.pattern}
    event(
        "a name with a line break is governed by a pattern policy: "
        + str(
            any(
                decisions[r.task_id].governing in patterned
                and any(c in (r.task_name or "") for c in "\n\r\x85\u2028\u2029")
                for r in rows
            )
        )
    )
    event(
        "a nameless row is governed by a policy behind a pattern policy: "
        + str(
            any(
                r.task_name is None
                and decisions[r.task_id].governing is not None
                and any(
                    p.name in patterned
                    for p in enabled[
                        : [q.name for q in enabled].index(decisions[r.task_id].governing)
                    ]
                )
                for r in rows
            )
        )
    )
    event(
        f"kept by a hold or a restore grace although due: {any(d.due and d.kept for d in decisions.values())}"
    )
    note("oracle:\n  " + "\n  ".join(describe(by_id[t], d) for t, d in sorted(decisions.items())))

    problems: dict[str, list[str]] = {"explain": [], "dry run": [], "real run": [], "rows left": []}

    # (a) explain, the Python path.
    for task_id, decision in decisions.items():
        row = by_id[task_id]
        e = explain(task_id)
        app_due = e.due_at is not None and e.due_at < now
        got = (e.present, e.governing, e.keeps_forever, app_due, e.protected)
        want = (True, decision.governing, decision.keep is None, decision.due, decision.kept)
        if got != want:
            problems["explain"].append(
                f"{describe(row, decision)}; explain: policy={e.governing!r} keeps_forever={e.keeps_forever} "
                f"due_at={e.due_at} due={app_due} protected={e.protected}"
            )
        elif decision.keep is not None and e.due_at != row.date_done + decision.keep:
            problems["explain"].append(f"{describe(row, decision)}; explain due_at={e.due_at}")

    # (b) the dry run: what would go, per policy and for the remainder; nothing changes.
    extra = ["--sleep", "0"] + (
        ["--batch-size", str(population.batch_size)] if population.batch_size else []
    )
    dry = cleanup_json("--dry-run", *extra)
    dry_policies = {p["name"]: p for p in dry["policies"]}
    if dry["status"] != "succeeded":
        notes = CleanupRun.objects.get(pk=dry["run"]).notes
        problems["dry run"].append(f"status {dry['status']}; notes {notes}")
    if sorted(p["name"] for p in dry["policies"]) != sorted(oracle_counts):
        problems["dry run"].append(
            f"policies reported {sorted(dry_policies)}, enabled {sorted(oracle_counts)}"
        )
    for name, count in oracle_counts.items():
        got = dry_policies.get(name, {}).get("matched")
        if got != count:
            problems["dry run"].append(f"policy {name!r}: matched {got}, oracle {count}")
    if dry["unmatched"]["matched"] != oracle_unmatched:
        problems["dry run"].append(
            f"unmatched: matched {dry['unmatched']['matched']}, oracle {oracle_unmatched}"
        )
    if ids_left() != set(decisions):
        problems["dry run"].append(f"the dry run deleted {sorted(set(decisions) - ids_left())}")

    # (c) the real run: deleted per policy equals what the oracle says goes.
    real = cleanup_json(*extra)
    real_policies = {p["name"]: p for p in real["policies"]}
    if real["status"] != "succeeded":
        notes = CleanupRun.objects.get(pk=real["run"]).notes
        problems["real run"].append(f"status {real['status']}; notes {notes}")
    for spec in [p for p in enabled]:
        report = real_policies.get(spec.name, {})
        want = oracle_counts[spec.name]
        got = (report.get("matched"), report.get("deleted"), report.get("archived"))
        if got != (want, want, want if spec.archive else 0):
            problems["real run"].append(
                f"policy {spec.name!r}: matched/deleted/archived {got}, oracle {want} (archive={spec.archive})"
            )
    if real["unmatched"]["deleted"] != oracle_unmatched:
        problems["real run"].append(
            f"unmatched: deleted {real['unmatched']['deleted']}, oracle {oracle_unmatched}"
        )

    # (d) what is left is exactly what the oracle keeps.
    left = ids_left()
    for task_id in sorted(oracle_left - left):
        problems["rows left"].append(
            f"DELETED but kept by the rule: {describe(by_id[task_id], decisions[task_id])}"
        )
    for task_id in sorted(left - oracle_left):
        problems["rows left"].append(
            f"LEFT but due: {describe(by_id[task_id], decisions[task_id])}"
        )

    summary = (
        "\n".join(f"[{section}] {line}" for section, lines in problems.items() for line in lines)
        + f"\npolicies (precedence order): {enabled}\nholds: {holds}\ngraces: {graces}"
        + f"\nnow: {now.isoformat()}; --batch-size {population.batch_size}"
    )
    # One assertion per path, so that Hypothesis shrinks each kind of disagreement on its own.
    assert not problems["rows left"], (
        f"{connection.vendor}: the rows left differ from the oracle\n{summary}"
    )
    assert not problems["real run"], f"{connection.vendor}: the real run's counts differ\n{summary}"
    assert not problems["dry run"], (
        f"{connection.vendor}: the dry run differs from the oracle\n{summary}"
    )
    assert not problems["explain"], (
        f"{connection.vendor}: explain differs from the oracle\n{summary}"
    )


@pytest.mark.django_db
@PROPERTY
@given(population=populations(allow_archive=False))
def test_app_decides_what_the_oracle_decides(population, quiet_logs):
    check_population(population, None, "plain")


@pytest.mark.django_db
@settings(PROPERTY, max_examples=max(DIFF_EXAMPLES // 4, 5))
@given(population=populations(allow_archive=True))
def test_archive_policies_follow_the_same_rule(population, quiet_logs, archive_root):
    check_population(population, archive_root, "with-archive")


# =============================================================================
# Hand-written cases that must hold on every database.
# =============================================================================

NOW = datetime(2024, 3, 10, 12, 0, 0, tzinfo=UTC)


def make_policy(name: str, **fields: Any) -> RetentionPolicy:
    policy = RetentionPolicy(name=name, tier=RetentionTier.objects.get(slug="daily"), **fields)
    policy.full_clean()
    policy.save()
    return policy


def make_row(
    task_id: str,
    *,
    task_name: str | None,
    done: datetime,
    status: str = "SUCCESS",
    result: str | None = '"ok"',
) -> None:
    TaskResult.objects.create(
        task_id=task_id,
        task_name=task_name,
        status=status,
        result=result,
        content_type="application/json",
        content_encoding="utf-8",
    )
    TaskResult.objects.filter(task_id=task_id).update(date_done=done, date_created=done)


@pytest.mark.django_db
class TestKeepRuleRegressions:
    @pytest.fixture(autouse=True)
    def _frozen(self, quiet_logs: None) -> Iterator[None]:
        RetentionPolicy.objects.update(enabled=False)
        with time_machine.travel(NOW, tick=False):
            yield

    @pytest.mark.parametrize(
        "name",
        [
            "critical.x\ny",
            "critical.\n",
            "critical.x\r",
            "critical.\r\n",
            "critical.x\n",
            "critical.\u2028y",
        ],
    )
    def test_keep_forever_protects_names_with_line_breaks(self, name):
        make_policy("critical", task_name_pattern="critical.*", keep_for=None, priority=1)
        make_row("c", task_name=name, done=NOW - timedelta(days=400))
        make_row("o", task_name="other", done=NOW - timedelta(days=400))
        assert explain("c").governing == "critical"

        dry = cleanup_json("--dry-run")
        assert [(p["name"], p["matched"]) for p in dry["policies"]] == [("critical", 0)]
        assert dry["unmatched"]["matched"] == 1

        real = cleanup_json()
        assert [(p["name"], p["deleted"]) for p in real["policies"]] == [("critical", 0)]
        assert real["unmatched"]["deleted"] == 1
        assert ids_left() == {"c"}

    def test_nameless_failure_is_booked_to_the_failure_policy_in_both_runs(self):
        # A pattern policy ahead of it: "*" must not match a result stored without a name.
        make_policy("named", task_name_pattern="*", keep_for=timedelta(days=30), priority=1)
        make_policy("failures", statuses=["FAILURE"], keep_for=timedelta(days=7), priority=10)
        make_row("nameless", task_name=None, status="FAILURE", done=NOW - timedelta(days=8))
        assert explain("nameless").governing == "failures"

        dry = cleanup_json("--dry-run")
        real = cleanup_json()

        assert {p["name"]: p["matched"] for p in dry["policies"]} == {"named": 0, "failures": 1}
        assert dry["unmatched"]["matched"] == 0
        assert {p["name"]: p["deleted"] for p in real["policies"]} == {"named": 0, "failures": 1}
        assert {p["name"]: p["matched"] for p in real["policies"]} == {"named": 0, "failures": 1}
        assert real["unmatched"] == {"matched": 0, "deleted": 0}
        assert ids_left() == set()

    @pytest.mark.parametrize("now", [NOW, NOW + timedelta(microseconds=123_457)])
    @pytest.mark.parametrize("batch_size", [None, "1"])
    def test_exactly_at_the_cutoff_is_not_due_one_microsecond_older_is(self, now, batch_size):
        keep = timedelta(hours=6)
        expires = oracle_result_expires()
        assert expires is not None
        with time_machine.travel(now, tick=False):
            make_policy("six-hours", task_name_pattern="reports.*", keep_for=keep, priority=1)
            make_row("p-at", task_name="reports.a", done=now - keep)
            make_row("p-older", task_name="reports.b", done=now - keep - US)
            make_row("p-newer", task_name="reports.c", done=now - keep + US)
            make_row("r-at", task_name="misc", done=now - expires)
            make_row("r-older", task_name="misc", done=now - expires - US)
            make_row("r-newer", task_name="misc", done=now - expires + US)
            extra = ["--batch-size", batch_size] if batch_size else []

            dry = cleanup_json("--dry-run", *extra)
            assert [(p["name"], p["matched"]) for p in dry["policies"]] == [("six-hours", 1)]
            assert dry["unmatched"]["matched"] == 1
            for task_id, due in [
                ("p-at", False),
                ("p-older", True),
                ("p-newer", False),
                ("r-at", False),
                ("r-older", True),
                ("r-newer", False),
            ]:
                e = explain(task_id)
                assert (e.due_at is not None and e.due_at < now) is due, task_id

            real = cleanup_json(*extra)
            assert [(p["name"], p["deleted"]) for p in real["policies"]] == [("six-hours", 1)]
            assert real["unmatched"]["deleted"] == 1
            assert ids_left() == {"p-at", "p-newer", "r-at", "r-newer"}

    @pytest.mark.parametrize("batch_size", ["1", "2"])
    def test_rows_that_are_not_due_do_not_end_the_walk_early(self, batch_size):
        # Older than the cutoff but kept (a keep-forever policy, a hold): a walk that
        # meets several batches' worth of them before the due rows must go on.
        make_policy("critical", task_name_pattern="critical.*", keep_for=None, priority=1)
        for i in range(7):
            make_row(f"kept-{i}", task_name=f"critical.{i}", done=NOW - timedelta(days=20 - i))
        make_row("held", task_name="misc", done=NOW - timedelta(days=12))
        RetentionHold.objects.create(task_id="held", reason="r")
        make_row("due-1", task_name="misc", done=NOW - timedelta(days=5))
        make_row("due-2", task_name="misc", done=NOW - timedelta(days=4))

        dry = cleanup_json("--dry-run", "--batch-size", batch_size, "--sleep", "0")
        real = cleanup_json("--batch-size", batch_size, "--sleep", "0")
        got = {
            "dry run": (dry["status"], dry["unmatched"]["matched"]),
            "real run": (real["status"], real["unmatched"]["deleted"]),
            "notes": CleanupRun.objects.get(pk=real["run"]).notes
            if real["status"] != "succeeded"
            else [],
            "left": sorted(ids_left()),
        }
        want = {
            "dry run": ("succeeded", 2),
            "real run": ("succeeded", 2),
            "notes": [],
            "left": sorted([f"kept-{i}" for i in range(7)] + ["held"]),
        }
        assert got == want, f"{connection.vendor}: {got}"

    def test_a_hold_and_a_restore_grace_keep_what_a_policy_would_delete(self):
        make_policy("short", keep_for=timedelta(minutes=1), priority=1)
        for task_id in ["held", "hold-ends-now", "graced", "grace-ended", "free"]:
            make_row(task_id, task_name="t", done=NOW - timedelta(days=2))
        RetentionHold.objects.create(task_id="held", reason="r", until=NOW + US)
        RetentionHold.objects.create(task_id="hold-ends-now", reason="r", until=NOW)
        live = ArchiveBatch.objects.create(policy_name="x", status="restored", grace_until=NOW + US)
        over = ArchiveBatch.objects.create(policy_name="x", status="restored", grace_until=NOW)
        ArchivedResult.objects.create(
            batch=live, task_id="graced", date_done=NOW - timedelta(days=2)
        )
        ArchivedResult.objects.create(
            batch=over, task_id="grace-ended", date_done=NOW - timedelta(days=2)
        )

        assert [
            t
            for t in ["held", "hold-ends-now", "graced", "grace-ended", "free"]
            if explain(t).protected
        ] == [
            "held",
            "graced",
        ]
        dry = cleanup_json("--dry-run")
        assert dry["policies"][0]["matched"] == 3
        real = cleanup_json()
        assert real["policies"][0]["deleted"] == 3
        assert ids_left() == {"held", "graced"}

    def test_a_hold_or_a_grace_names_one_task_id_exactly(self):
        # Task ids are compared as the oracle compares them: exactly (no case
        # folding, no trailing-space padding), whatever the column's collation.
        make_policy("short", keep_for=timedelta(minutes=1), priority=1)
        for task_id in ["case-held", "pad-held", "case-graced"]:
            make_row(task_id, task_name="t", done=NOW - timedelta(days=2))
        RetentionHold.objects.create(task_id="CASE-HELD", reason="another task")
        RetentionHold.objects.create(task_id="pad-held ", reason="another task")
        live = ArchiveBatch.objects.create(
            policy_name="x", status="restored", grace_until=NOW + timedelta(days=1)
        )
        ArchivedResult.objects.create(
            batch=live, task_id="Case-Graced", date_done=NOW - timedelta(days=2)
        )

        protected = [t for t in ["case-held", "pad-held", "case-graced"] if explain(t).protected]
        would_go = cleanup_json("--dry-run")["policies"][0]["matched"]
        deleted = cleanup_json()["policies"][0]["deleted"]
        # One comparison, so that a failure shows every path at once.
        got = {
            "explain protects": protected,
            "dry run matched": would_go,
            "deleted": deleted,
            "left": sorted(ids_left()),
        }
        want = {"explain protects": [], "dry run matched": 3, "deleted": 3, "left": []}
        assert got == want, f"{connection.vendor}: {got}"
