"""Why a result is kept, when it becomes due, or where it went.

``explain(task_id)`` answers from the policies, holds, the run history and the
archive look-up rows (``ArchivedResult``, indexed by task id), never by reading
archive objects. The ``explain_result`` command and the admin render it.

Times are shown in local time and say their zone. With ``USE_TZ = False`` the
database's datetimes are naive ``TIME_ZONE`` local times: they are compared with
``timezone.now()`` (naive too) as they are, and given their zone only for display.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import router
from django.utils import timezone
from django_celery_results.models import TaskResult

from .celery_config import result_expires
from .matching import Governance, Rule, row_bytes, text_bytes
from .keep import waiting_chord_parts
from .models import ArchivedResult, RetentionHold


@dataclass
class Verdict:
    policy: str
    priority: int
    tier: str
    matches: bool
    reasons: list[str]  # one per matcher: "task name 'x' matches 'x.*'"


@dataclass
class ArchiveRef:
    batch: int
    status: str
    policy: str
    date_done: datetime | None
    archived_at: datetime
    run: int | None


@dataclass
class Explanation:
    task_id: str
    present: bool
    task_name: str | None = None
    status: str | None = None
    date_done: datetime | None = None
    bytes: int | None = None
    verdicts: list[Verdict] = field(default_factory=list)
    governing: str | None = None  # policy name; None: the remainder (result_expires)
    keeps_forever: bool = False
    due_at: datetime | None = None
    holds: list[RetentionHold] = field(default_factory=list)
    grace_until: datetime | None = None
    # A header part of a chord still waiting for another part (keep.waiting_chord_parts).
    chord_waiting: bool = False
    archives: list[ArchiveRef] = field(default_factory=list)

    @property
    def protected(self) -> bool:
        return bool(self.holds) or self.grace_until is not None or self.chord_waiting

    def summary(self, now: datetime | None = None) -> str:
        now = now or timezone.now()
        if not self.present:
            if self.archives:
                newest = self.archives[0]
                return (
                    f"{self.task_id} is not in the result table; archive batch {newest.batch} "
                    f"({newest.status}) holds it — restore_results {newest.batch} --task-id {self.task_id}"
                )
            return f"{self.task_id} is not in the result table and no archive batch holds it"
        who = f"policy {self.governing!r}" if self.governing else "no policy (the remainder, result_expires)"
        if self.protected:
            until = [h.until for h in self.holds] + [self.grace_until]
            if any(h.until is None for h in self.holds):
                when = "indefinitely"
            elif self.chord_waiting and not self.holds and self.grace_until is None:
                when = "while its chord waits for another part"
            else:
                when = f"until {_local(max(u for u in until if u is not None)):%Y-%m-%d %H:%M %Z}"
            protection = f"; protected {when}"
        else:
            protection = ""
        if self.keeps_forever or self.due_at is None:
            return f"{self.task_id} is governed by {who} and kept forever{protection}"
        # Due means date_done < now - keep_for: at due_at itself it is not due yet.
        tense = "was due" if self.due_at < now else "becomes due"
        return f"{self.task_id} is governed by {who}; it {tense} at {_local(self.due_at):%Y-%m-%d %H:%M %Z}{protection}"


def _local(value: datetime) -> datetime:
    """``value`` in local time, aware (so ``%Z`` and ``isoformat`` name the zone).

    A naive datetime is what the database gives with ``USE_TZ = False``: already
    local time in ``TIME_ZONE``, so it is given that zone, never converted.
    """
    if timezone.is_naive(value):
        return timezone.make_aware(value, timezone.get_default_timezone())
    return timezone.localtime(value)


def _reasons(rule: Rule, row: TaskResult) -> list[str]:
    reasons = []
    if rule.task_name_pattern:
        ok = row.task_name is not None and fnmatch.fnmatchcase(row.task_name, rule.task_name_pattern)
        reasons.append(f"task name {row.task_name!r} {'matches' if ok else 'does not match'} {rule.task_name_pattern!r}")
    else:
        reasons.append("any task name")
    if rule.statuses:
        verb = "is" if row.status in rule.statuses else "is not"
        reasons.append(f"status {row.status} {verb} one of {', '.join(rule.statuses)}")
    else:
        reasons.append("any status")
    if rule.min_result_bytes is not None:
        size = text_bytes(row.result)
        verb = "≥" if size >= rule.min_result_bytes else "<"
        reasons.append(f"result size {size} bytes {verb} {rule.min_result_bytes}")
    return reasons


def explain(task_id: str, *, using: str | None = None, now: datetime | None = None) -> Explanation:
    now = now or timezone.now()
    db = using or router.db_for_read(TaskResult)
    row = TaskResult.objects.using(db).filter(task_id=task_id).first()
    archived = [
        a
        for a in ArchivedResult.objects.using(router.db_for_read(ArchivedResult))
        .filter(task_id=task_id)
        .select_related("batch")
        .order_by("-batch__created_at", "-batch_id")
        if a.task_id == task_id  # exact, whatever the collation (MySQL ignores case)
    ]
    refs = [
        ArchiveRef(a.batch_id, a.batch.status, a.batch.policy_name, a.date_done, a.batch.created_at, a.batch.run_id)
        for a in archived
    ]
    if row is None:
        return Explanation(task_id=task_id, present=False, archives=refs)
    governance = Governance.load()
    result = Explanation(
        task_id=task_id,
        present=True,
        task_name=row.task_name,
        status=row.status,
        date_done=row.date_done,
        bytes=row_bytes(row),
        archives=refs,
    )
    for rule in governance.rules:
        matches = rule.matches(task_name=row.task_name, status=row.status, result=row.result)
        result.verdicts.append(Verdict(rule.name, rule.priority, rule.tier, matches, _reasons(rule, row)))
    rule = governance.governing(task_name=row.task_name, status=row.status, result=row.result)
    keep: timedelta | None
    if rule is not None:
        result.governing = rule.name
        keep = rule.keep_for
    else:
        keep = result_expires()
    result.keeps_forever = keep is None
    if keep is not None and row.date_done is not None:
        result.due_at = row.date_done + keep
    # Compared again in Python: MySQL's collations match ids regardless of case.
    result.holds = [h for h in RetentionHold.objects.active(now).filter(task_id=task_id) if h.task_id == task_id]
    graces = [
        a.batch.grace_until for a in archived if a.batch.grace_until is not None and a.batch.grace_until > now
    ]
    result.grace_until = max(graces) if graces else None
    result.chord_waiting = task_id in waiting_chord_parts()
    return result


def as_dict(explanation: Explanation, now: datetime | None = None) -> dict[str, Any]:
    def iso(value: datetime | None) -> str | None:
        # A naive (USE_TZ = False) time gets its TIME_ZONE offset: without one, a
        # reader of the JSON (and the admin's parse_datetime) could take it for UTC.
        if value is None:
            return None
        return (_local(value) if timezone.is_naive(value) else value).isoformat()

    e = explanation
    return {
        "task_id": e.task_id,
        "present": e.present,
        "summary": e.summary(now),
        "task_name": e.task_name,
        "status": e.status,
        "date_done": iso(e.date_done),
        "bytes": e.bytes,
        "governing_policy": e.governing,
        "keeps_forever": e.keeps_forever,
        "due_at": iso(e.due_at),
        "policies": [
            {"name": v.policy, "priority": v.priority, "tier": v.tier, "matches": v.matches, "reasons": v.reasons}
            for v in e.verdicts
        ],
        "holds": [{"reason": h.reason, "until": iso(h.until)} for h in e.holds],
        "restore_grace_until": iso(e.grace_until),
        "chord_waiting": e.chord_waiting,
        "archives": [
            {"batch": a.batch, "status": a.status, "policy": a.policy, "date_done": iso(a.date_done),
             "archived_at": iso(a.archived_at), "run": a.run}
            for a in e.archives
        ],
    }
