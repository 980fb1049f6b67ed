"""Holds take effect in Redis at once: a held result's key loses its TTL, a lifted one gets it back.

In Redis, expiry is deletion. Without this, a hold placed at 10:00 on a result
stored at 9:45 with a 30-minute TTL would lose it at 10:15, whatever the hold
says, unless a run of its policy's tier happened to walk the key first. So
whenever holds change — ``save()``, ``objects.create``, ``bulk_create``, a
queryset ``update()`` of ``until`` or ``task_id``, ``delete()``, from the admin,
a command or any code — the keys of the task ids concerned are brought in line
with what is kept *now*, once the transaction commits (a hold rolled back
changes nothing):

* kept (``keep.kept_task_ids``: an active hold, or restore grace): ``PERSIST``;
* not kept (lifted, deleted, or the hold saved had already ended): the expiry
  its policy gives, as the enforcer would set it (``redis_policies.verdict``,
  measured from the result's ``date_done``).

Every change is guarded by the value read, as the enforcer's are
(``redis_scan.CHANGE_LUA``): a result stored again meanwhile is the writer's.
Signals (connected in ``apps.ready``) cover ``save``/``create``/``delete``;
``RetentionHoldQuerySet.bulk_create``/``update``/``delete`` call in here for the
paths that send none (or one per row).

Holds whose ``until`` passes lapse by time alone, with no save to notice it:
their keys stay without a TTL until the enforcer's next run gives them their
policy's expiry (or deletes them, when due). Nothing is lost meanwhile; a lapsed
result is only kept a little longer.

A Redis that cannot be reached never makes saving a hold fail: a warning names
the server, and the hold still protects the result, because the writer and the
enforcer ask ``keep`` for every key they give a TTL or delete; the enforcer's
next run makes the TTLs right.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete, post_save, pre_save
from django.utils import timezone

from . import keep, redis_scan
from .models import RetentionHold
from .redis_policies import PolicyTable, verdict

logger = logging.getLogger(__name__)

# Seconds a sync may wait for Redis: it runs in the request that saved the hold.
SYNC_TIMEOUT = 5.0
# A lifted result whose expiry (date_done + keep_for) has already passed gets the
# shortest TTL, 1 s, rather than being deleted here: expiry is how Redis results
# normally end (the writer's TTL), so it is what would have happened without the
# hold, while a deletion here would be one that no CleanupRun records; and a
# result exactly at its cutoff is not yet due by the SQL rule (date_done < now -
# keep_for). (PEXPIREAT to a time already past would delete it at once.)
MIN_TTL_MS = 1000

# Task ids gathered by ``collecting`` in this thread (None: not collecting).
_local = threading.local()
_PREVIOUS = "_retention_previous_task_id"


def connect() -> None:
    """Connect the receivers (``RetentionAdminConfig.ready``)."""
    uid = "retention_admin.redis_holds."
    pre_save.connect(_remember_task_id, sender=RetentionHold, dispatch_uid=uid + "pre_save")
    post_save.connect(_saved, sender=RetentionHold, dispatch_uid=uid + "post_save")
    post_delete.connect(_deleted, sender=RetentionHold, dispatch_uid=uid + "post_delete")


def _remember_task_id(
    sender: type[RetentionHold], instance: RetentionHold, using: str, **kwargs: Any
) -> None:
    # A hold moved to another task id releases the old one: its key is synced too.
    update_fields = kwargs.get("update_fields")
    if instance._state.adding or instance.pk is None:
        return
    if update_fields is not None and "task_id" not in update_fields:
        return
    saved = sender._base_manager.using(using).filter(pk=instance.pk)
    setattr(instance, _PREVIOUS, saved.values_list("task_id", flat=True).first())


def _saved(sender: type[RetentionHold], instance: RetentionHold, using: str, **kwargs: Any) -> None:
    ids = [instance.task_id]
    previous = instance.__dict__.pop(_PREVIOUS, None)
    if previous is not None and previous != instance.task_id:
        ids.append(previous)
    sync_on_commit(ids, using=using)


def _deleted(sender: type[RetentionHold], instance: RetentionHold, using: str, **kwargs: Any) -> None:
    sync_on_commit([instance.task_id], using=using)


def sync_on_commit(task_ids: Iterable[str], *, using: str) -> None:
    """Sync the keys of ``task_ids`` once the current transaction on ``using`` commits."""
    pending: list[str] | None = getattr(_local, "pending", None)
    if pending is not None:
        pending.extend(task_ids)
        return
    ids = list(dict.fromkeys(task_ids))
    if ids:
        transaction.on_commit(functools.partial(sync, ids), using=using, robust=True)


@contextmanager
def collecting(*, using: str) -> Iterator[None]:
    """Gather the task ids that signals report within, and sync them together after the commit.

    ``QuerySet.delete`` sends one ``post_delete`` per row: thousands of holds
    deleted at once make one sync, not thousands.
    """
    if getattr(_local, "pending", None) is not None:
        yield  # an outer block syncs
        return
    pending: list[str] = []
    _local.pending = pending
    try:
        yield
    finally:
        _local.pending = None
    # Reached only when the block succeeded: nothing to sync for what raised.
    sync_on_commit(pending, using=using)


def sync(task_ids: Iterable[str], now: datetime | None = None) -> int:
    """Bring the Redis keys of ``task_ids`` in line with what is kept at ``now``; how many changed.

    Does nothing when the result backend is not Redis. Never raises: failures are
    logged, and the writer and the enforcer still respect every hold.
    """
    ids = list(dict.fromkeys(task_ids))
    backend = redis_scan.redis_backend() if ids else None
    if backend is None:
        return 0
    try:
        return _sync(backend, ids, now or timezone.now())
    except redis_scan.RedisUnavailable as exc:
        logger.warning(
            "retention_admin: holds on %d result(s) saved, but their Redis keys were not "
            "updated: %s. The holds still protect them (the result writer and the cleanup "
            "ask for holds); the next cleanup run sets their TTLs.",
            len(ids),
            exc,
        )
    except Exception:  # noqa: BLE001 - the hold is committed: saving it must not fail now
        logger.warning(
            "retention_admin: holds on %d result(s) saved, but their Redis keys were not "
            "updated; the next cleanup run sets their TTLs.",
            len(ids),
            exc_info=True,
        )
    return 0


def _sync(backend: Any, ids: list[str], now: datetime) -> int:
    from redis.exceptions import RedisError

    kept = keep.kept_task_ids(ids, now)
    # Policies only when some key may need its expiry back; read fresh, not from
    # a process's cache, so that a sync agrees with the next enforcer run.
    table = PolicyTable.load() if len(kept) < len(ids) else None
    changed = 0
    client = None
    try:
        client = redis_scan.connect(backend, SYNC_TIMEOUT)
        changer = client.register_script(redis_scan.CHANGE_LUA)
        for start in range(0, len(ids), redis_scan.MUTATE_KEYS):
            chunk = ids[start : start + redis_scan.MUTATE_KEYS]
            keys = [backend.get_key_for_task(task_id) for task_id in chunk]
            pipe = client.pipeline(transaction=False)
            pipe.mget(keys)
            pipe.eval(redis_scan.PTTL_LUA, len(keys), *keys)
            values, pttls = pipe.execute()
            read_ms = int(time.time() * 1000)
            changes: list[tuple[bytes, bytes, str | int]] = []
            for task_id, key, value, pttl in zip(chunk, keys, values, pttls):
                if value is None or pttl == -2:
                    continue  # no result (yet): the writer asks for holds when it stores one
                op = "P" if task_id in kept else _expiry(backend, table, value, pttl, now, read_ms)
                if op == "P" and pttl < 0:
                    continue  # already without a TTL
                if op is not None:
                    changes.append((key, value, op))
            changed += _apply(changer, client, changes)
    except RedisError as exc:
        raise redis_scan.RedisUnavailable(redis_scan.describe_error(backend, exc)) from exc
    finally:
        if client is not None:
            client.close()
    return changed


def _expiry(
    backend: Any, table: PolicyTable | None, value: bytes, pttl: int, now: datetime, read_ms: int
) -> str | int | None:
    """What a key no longer kept gets: "P" (no TTL), an expiry time in ms, or None (as it is).

    The same choices as the enforcer's for a key that is not due (``Enforcer._judge``).
    """
    assert table is not None
    try:
        meta = backend.decode(value)
    except Exception:  # noqa: BLE001 - not a result Celery wrote: left alone, as the enforcer does
        return None
    if not isinstance(meta, dict) or "status" not in meta:
        return None
    status = str(meta["status"])
    task_name = meta.get("name")
    if task_name is not None and not isinstance(task_name, str):
        return None
    found = verdict(
        table,
        task_name=task_name,
        status=status,
        result_text=lambda: redis_scan.record_text(backend, meta.get("result")),
        remainder=redis_scan.remainder_expires(backend, status),
    )
    if found.keep_for is None:
        # Keep-forever and archive policies: no TTL. The remainder while
        # result_expires is None: whatever TTL it has stands.
        return "P" if found.rule is not None else None
    done = redis_scan.parse_date(meta.get("date_done"))
    if done is None and pttl >= 0:
        return None  # no completion date (not finished): a TTL it has stands
    expire_at = int(((done or now) + found.keep_for).timestamp() * 1000)
    expire_at = max(expire_at, read_ms + MIN_TTL_MS)
    if pttl >= 0 and abs(read_ms + pttl - expire_at) <= redis_scan.TOLERANCE_MS:
        return None
    return expire_at


def _apply(changer: Any, client: Any, changes: list[tuple[bytes, bytes, str | int]]) -> int:
    """Guarded changes in calls of bounded size (``MUTATE_KEYS`` keys, ``MUTATE_BYTES``)."""
    done = 0
    keys: list[bytes] = []
    args: list[Any] = []
    size = 0
    for index, (key, value, op) in enumerate(changes):
        keys.append(key)
        args += [value, op]
        size += len(value)
        if size >= redis_scan.MUTATE_BYTES or index == len(changes) - 1:
            done += sum(int(flag) for flag in changer(keys=keys, args=args, client=client))
            keys, args, size = [], [], 0
    return done
