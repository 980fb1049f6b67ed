"""Celery result backends that respect retention policies."""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
from datetime import timedelta
from typing import Any

from celery import states
from celery.backends.base import BackendStoreError
from django_celery_results.backends.database import DatabaseBackend

from . import conf
from .models import CleanupRun
from .redis_policies import PolicyCache, verdict

logger = logging.getLogger(__name__)

# Celery 5.7 added ``expires`` to RedisBackend.set (for result_failure_expires).


@functools.cache
def _set_takes_expires(cls: type) -> bool:
    """Celery 5.7 added ``expires`` to RedisBackend.set (for result_failure_expires)."""
    return "expires" in inspect.signature(cls.set).parameters  # type: ignore[attr-defined]


class RetentionDatabaseBackend(DatabaseBackend):  # type: ignore[misc]
    """django-celery-results' backend whose ``cleanup()`` leaves governed results alone.

    ``celery.backend_cleanup`` calls ``cleanup()``: stock django-db deletes every
    result older than ``result_expires`` in one transaction. Here it deletes, in
    batches, only the results no enabled policy governs (their policy's tier does
    the rest), plus expired GroupResults and orphaned ChordCounters, and records
    a CleanupRun.
    """

    def cleanup(self) -> None:
        from .executor import Options, Selection, run_cleanup

        run_cleanup(
            Selection(remainder=True),
            Options(trigger=CleanupRun.Trigger.BACKEND_CLEANUP),
        )


def as_text(payload: str | bytes) -> str:
    """A serialized value as the text the database backend would store."""
    return payload if isinstance(payload, str) else payload.decode("utf-8", errors="replace")


class RetentionRedisMixin:
    """The write path of both Redis backends: each task result stored with its policy's TTL.

    The governing policy (task name, status, result size: as for database results)
    decides the TTL; keep-forever and archive policies, and kept task ids (a hold,
    restore grace), get none; results no policy governs keep Celery's
    ``result_expires`` (and ``result_failure_expires``). Policies come from a
    per-process cache, so storing a result never queries them; whether its one task
    id is kept is asked (``keep.is_kept``) for each result that would get a TTL.
    Group and chord keys are Celery's.
    """

    # Provided by Celery's RedisBackend, which every class using this mixin extends.
    expires: Any
    get_key_for_task: Any
    set: Any
    ensure: Any
    client: Any
    _MAX_STR_VALUE_SIZE: int
    _encode: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.policies = PolicyCache()
        # monotonic time of the last failed hold look-up (see is_kept).
        self._kept_failed_at: float | None = None
        # The meta of the result being stored by this thread (see encode).
        self._storing = threading.local()

    # Celery's BaseKeyValueStoreBackend._store_result builds a result's meta, encodes
    # it with ``encode`` and writes it with ``_set_with_state(key, value, state)``,
    # the same on every Celery from 5.3 to 5.7. Those two hooks are all this class
    # overrides: ``encode`` remembers the meta (per thread) so that the TTL can be
    # chosen from it without decoding what was just encoded; ``_set_with_state``
    # writes with that TTL. Celery keeps its own checks (a stored SUCCESS is never
    # overwritten) and everything else it does around them.

    def encode(self, data: Any) -> Any:
        if isinstance(data, dict) and "task_id" in data and "status" in data:
            self._storing.meta = data
        return super().encode(data)  # type: ignore[misc]

    def _set_with_state(self, key: Any, value: Any, state: str) -> Any:
        meta, self._storing.meta = getattr(self._storing, "meta", None), None
        if meta is None or key != self.get_key_for_task(meta["task_id"]):
            return super()._set_with_state(key, value, state)  # type: ignore[misc]  # a group's key
        ttl = self.ttl_for(meta, state)
        stored = self._set_with_ttl(key, value, ttl)
        # Holds are asked after the write, not before: a hold committed meanwhile is
        # then either seen here, or its own sync (redis_holds, run after its commit)
        # finds the key already written with this TTL and removes it.
        if ttl and self.is_kept(meta["task_id"]):
            self.persist_kept(key)
        return stored

    def _set_with_ttl(self, key: Any, value: Any, ttl: int) -> Any:
        """Celery's ``set`` with ``ttl`` seconds (0: no TTL) in place of result_expires."""
        if _set_takes_expires(type(self)):
            return self.set(key, value, expires=ttl)  # Celery 5.7+ (0 means none there too)
        # Celery 5.3-5.6: set() always applies result_expires. The same steps (size
        # check, retried write and publish, in one pipeline) with the policy's TTL.
        if isinstance(value, str) and len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError("value too large for Redis backend")
        return self.ensure(self._set_ttl, (key, value, ttl))

    def _set_ttl(self, key: Any, value: Any, ttl: int) -> None:
        with self.client.pipeline() as pipe:
            if ttl:
                pipe.setex(key, ttl, value)
            else:
                pipe.set(key, value)
            pipe.publish(key, value)
            pipe.execute()

    def is_kept(self, task_id: str) -> bool:
        """Whether a hold or restore grace keeps ``task_id`` (one indexed look-up of that id).

        When the database cannot be read the answer is "kept": the result is stored
        without a TTL, which loses nothing (the enforcer gives it one later). The
        look-up is then not tried again for a refresh period, so an outage does not
        add a failing query to every result.
        """
        from django.utils import timezone

        from .keep import is_kept

        failed_at = self._kept_failed_at
        if failed_at is not None and time.monotonic() - failed_at < conf.get_config().redis_policy_refresh_seconds:
            return True
        try:
            kept = is_kept(task_id, timezone.now())
        except Exception as exc:  # noqa: BLE001 - any failure: store the result, keep it
            self._kept_failed_at = time.monotonic()
            logger.warning("retention_admin: could not read holds (%s); storing results without a TTL", exc)
            return True
        self._kept_failed_at = None
        return kept

    def persist_kept(self, key: bytes | str) -> None:
        """Remove the TTL just written to a kept result's key."""
        from redis.exceptions import RedisError

        try:
            self.client.persist(key)
        except RedisError as exc:
            # Stored, only with a TTL it should not have; the enforcer removes it.
            logger.warning("retention_admin: could not remove the TTL of kept result %r: %s", key, exc)

    def remainder_expires(self, state: str) -> int:
        """Celery's own expiry for a result no policy governs (0: none).

        ``result_failure_expires`` exists from Celery 5.7; before, failures expire
        with everything else.
        """
        expires = self.failure_expires if state == states.FAILURE else self.expires
        return int(expires or 0)

    @property
    def failure_expires(self) -> Any:
        return self.__dict__.get("failure_expires", self.expires)

    @failure_expires.setter
    def failure_expires(self, value: Any) -> None:
        self.__dict__["failure_expires"] = value

    def ttl_for(self, meta: dict[str, Any], state: str) -> int:
        """Seconds its policy lets this result live; 0 stores it without a TTL.

        Holds are not asked here: ``_store_result`` asks ``is_kept`` for a result
        that gets a TTL, after writing it (see there why).
        """
        table = self.policies.table()
        if table is None:
            return 0  # policies unreadable so far: keep it; the enforcer sets its TTL later
        remainder = self.remainder_expires(state)
        found = verdict(
            table,
            # As in the database: the task name is known only with result_extended.
            task_name=meta.get("name"),
            status=state,
            # The text the database backend would store in TaskResult.result.
            result_text=lambda: as_text(self._encode(meta["result"])[2]),
            remainder=timedelta(seconds=remainder) if remainder else None,
        )
        if found.keep_for is None:
            return 0
        return max(1, int(found.keep_for.total_seconds()))

    def cleanup(self) -> None:
        """``celery.backend_cleanup``: the remainder's keys get ``result_expires`` (SCAN, batched)."""
        from .executor import Options, Selection, run_cleanup

        run_cleanup(
            Selection(remainder=True),
            Options(trigger=CleanupRun.Trigger.BACKEND_CLEANUP),
        )


# The Redis backends subclass Celery's RedisBackend, whose module needs redis-py
# (the [redis] extra). They live in redis_backends.py and are resolved from here on
# first use, so that this module (and RetentionDatabaseBackend) works without it.
_REDIS_CLASSES = {"RetentionRedisBackend", "RetentionSentinelBackend"}
_CUTOVER_CLASSES = {"RetentionCutoverBackend"}


def __getattr__(name: str) -> Any:
    if name in _REDIS_CLASSES:
        from . import redis_backends

        return getattr(redis_backends, name)
    if name in _CUTOVER_CLASSES:
        from . import cutover

        return getattr(cutover, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
