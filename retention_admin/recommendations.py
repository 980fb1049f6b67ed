"""Recommendations: what to change, computed from snapshots, run history and the system checks.

Nothing here reads the result table: the latest snapshot already holds rows,
bytes and empty results per task name, and the results stuck in PENDING or
STARTED; run records hold what each policy matched. The backend_cleanup and
policy conflicts come from the system checks themselves (``checks.py``), so the
dashboard and ``manage.py check`` always agree.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from . import checks
from .matching import Governance, Rule
from .models import CleanupRun, RetentionPolicy, StorageSnapshot
from .report import human_bytes

# A task name needs this many stored results before "always empty" means something.
EMPTY_MIN_ROWS = 20
TOP_UNGOVERNED = 3
# A policy that matched nothing in this many recent real runs is reported.
IDLE_RUNS = 3
RUN_HISTORY = 200
CONFLICT_CHECKS = (checks.check_result_backend, checks.check_beat_scheduler, checks.check_result_extended)


@dataclass
class Recommendation:
    kind: str  # ignore_result, no_policy, idle_policy, stuck, check
    title: str
    detail: str
    subject: str = ""


def _own_policy(task_name: str, policies: list[RetentionPolicy]) -> RetentionPolicy | None:
    """The enabled policy whose task name pattern names this task (catch-alls do not count)."""
    for policy in policies:
        if policy.task_name_pattern and fnmatch.fnmatchcase(task_name, policy.task_name_pattern):
            return policy
    return None


def empty_results(snapshot: StorageSnapshot) -> list[Recommendation]:
    out = []
    approx = "about " if snapshot.rows_estimated else ""
    for name, figures in sorted((snapshot.task_profile or {}).items()):
        rows, empty = figures.get("rows", 0), figures.get("empty", 0)
        if name and rows >= EMPTY_MIN_ROWS and empty >= rows:
            out.append(
                Recommendation(
                    "ignore_result",
                    f"{name}: every stored result is empty",
                    f"{approx}{rows:,} results stored, all null or empty. If nothing reads them, declare "
                    "the task with ignore_result=True and they are no longer stored at all.",
                    name,
                )
            )
    return out


def ungoverned_top_tasks(snapshot: StorageSnapshot, policies: list[RetentionPolicy]) -> list[Recommendation]:
    out = []
    for entry in snapshot.rows_by_task or []:
        name = entry.get("task_name")
        if not name or not entry.get("bytes") or _own_policy(name, policies):
            continue
        out.append(
            Recommendation(
                "no_policy",
                f"{name}: {human_bytes(entry['bytes'])} stored and no policy of its own",
                f"{entry['rows']:,} results (bytes estimated) follow a catch-all policy or result_expires. "
                "A policy for this task name decides how long they are worth keeping.",
                name,
            )
        )
        if len(out) >= TOP_UNGOVERNED:
            break
    return out


def taken_by(
    rule: Rule, ahead: Sequence[Rule], names: Sequence[str | None], statuses: Sequence[str]
) -> list[str]:
    """The policies ahead of ``rule`` taking every stored result it matches; [] if it may govern one.

    A snapshot gives task names and statuses, not which status each name has, so
    every stored name is paired with every stored status: ``rule`` is said to
    govern nothing only when no such pair is left to it.
    """
    # Its own size matcher lets some results through, whatever their name and status;
    # a policy ahead with a size minimum takes only the larger ones, and matches()
    # with result=None is true only for a policy ahead that takes them all.
    unsized = replace(rule, min_result_bytes=None)
    takers: list[str] = []
    for name in names:
        for status in statuses:
            if not unsized.matches(task_name=name, status=status, result=None):
                continue
            taker = next(
                (r for r in ahead if r.matches(task_name=name, status=status, result=None)), None
            )
            if taker is None:
                return []
            if taker.name not in takers:
                takers.append(taker.name)
    return takers


def idle_policies(snapshot: StorageSnapshot | None, policies: list[RetentionPolicy]) -> list[Recommendation]:
    out: dict[str, Recommendation] = {}
    if snapshot is not None and snapshot.task_profile:
        names = [n for n in snapshot.task_profile if n]
        present = {s for s, n in (snapshot.rows_by_status or {}).items() if n}
        # A stored result without a task name (key "") matches only a blank pattern.
        stored_names = [n or None for n in snapshot.task_profile]
        rules = Governance(Rule.from_policy(p) for p in policies).rules
        position = {rule.name: i for i, rule in enumerate(rules)}
        for policy in policies:
            reasons = []
            if policy.task_name_pattern and not any(
                fnmatch.fnmatchcase(n, policy.task_name_pattern) for n in names
            ):
                reasons.append(f"no stored task name matches {policy.task_name_pattern!r}")
            if policy.statuses and not set(policy.statuses) & present:
                reasons.append(f"no stored result has status {', '.join(policy.statuses)}")
            if reasons:
                out[policy.name] = Recommendation(
                    "idle_policy", f"Policy {policy.name} matches nothing",
                    "In the latest snapshot " + "; ".join(reasons) + ". Check its pattern, or disable it.",
                    policy.name,
                )
            elif policy.keep_for is None and present:
                # Its run history says nothing (see below): whether it governs any
                # stored result is the signal for a keep-forever policy.
                i = position[policy.name]
                takers = taken_by(rules[i], rules[:i], stored_names, sorted(present))
                if takers:
                    out[policy.name] = Recommendation(
                        "idle_policy", f"Policy {policy.name} governs nothing",
                        "In the latest snapshot every stored result it matches is taken by a policy "
                        f"ahead of it ({', '.join(takers)}), so it keeps nothing. Check its priority, "
                        "or disable it.",
                        policy.name,
                    )
    # Run history: enabled policies that selected nothing due in their recent runs.
    matched: dict[str, list[int]] = {}
    for report in (
        CleanupRun.objects.filter(dry_run=False)
        .exclude(status=CleanupRun.Status.DISPATCHED)
        .order_by("-started_at")
        .values_list("report", flat=True)[:RUN_HISTORY]
    ):
        for entry in (report or {}).get("policies", []):
            matched.setdefault(entry.get("name"), []).append(int(entry.get("matched") or 0))
    for policy in policies:
        if policy.keep_for is None:
            # Nothing it governs is ever due, so its "matched" is 0 in every run by
            # construction: that says nothing about whether it governs anything.
            continue
        counts = matched.get(policy.name, [])
        if policy.name not in out and len(counts) >= IDLE_RUNS and not any(counts):
            out[policy.name] = Recommendation(
                "idle_policy", f"Policy {policy.name} matched nothing in its last {len(counts)} runs",
                "No result it governs became due. If that is not expected, check its pattern, statuses and "
                "priority (a policy ahead of it may take its results).",
                policy.name,
            )
    return list(out.values())


def stuck(snapshot: StorageSnapshot) -> list[Recommendation]:
    figures = (snapshot.details or {}).get("stuck") or {}
    rows = figures.get("rows") or {}
    total = sum(rows.values())
    if not total:
        return []
    hours = figures.get("older_than_s", 0) / 3600
    parts = ", ".join(f"{n:,} {state}" for state, n in rows.items() if n)
    oldest = figures.get("oldest") or "unknown"
    if oldest != "unknown":
        oldest = datetime.fromisoformat(oldest).strftime("%Y-%m-%d %H:%M %Z").strip()
    return [
        Recommendation(
            "stuck",
            f"{total:,} results stuck in PENDING/STARTED for more than {hours:g} hours",
            f"{parts} (the oldest since {oldest}). No task should run that long: their "
            "workers probably died or were killed. Revoke or re-run them; policies with status "
            "PENDING or STARTED can clean them up.",
        )
    ]


def conflicts() -> list[Recommendation]:
    out = []
    for check in CONFLICT_CHECKS:
        for message in check():
            out.append(Recommendation("check", message.msg, message.hint or "", message.id or ""))
    return out


def recommend(snapshot: StorageSnapshot | None = None) -> list[Recommendation]:
    """Every recommendation, from the latest measured snapshot unless one is given."""
    if snapshot is None:
        snapshot = (
            StorageSnapshot.objects.filter(kind=StorageSnapshot.Kind.MEASURED).order_by("-taken_at", "-pk").first()
        )
    policies = list(RetentionPolicy.objects.in_precedence_order().select_related("tier"))
    found: list[Recommendation] = []
    if snapshot is not None:
        found += empty_results(snapshot)
        found += ungoverned_top_tasks(snapshot, policies)
        found += stuck(snapshot)
    found += idle_policies(snapshot, policies)
    found += conflicts()
    return found


def as_dicts(found: list[Recommendation]) -> list[dict[str, Any]]:
    return [r.__dict__.copy() for r in found]

