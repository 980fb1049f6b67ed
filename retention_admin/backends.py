"""Celery result backends that respect retention policies."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import states
from celery.backends.base import BackendStoreError
from celery.backends.redis import RedisBackend, SentinelBackend
from celery.utils.serialization import bytes_to_str
from django_celery_results.backends.database import DatabaseBackend

from .models import CleanupRun
from .redis_policies import PolicyCache, verdict


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
    decides the TTL; keep-forever and archive policies, and held task ids, get none;
    results no policy governs keep Celery's ``result_expires`` (and
    ``result_failure_expires``). Policies come from a per-process cache, so storing
    a result never queries the database. Group and chord keys are Celery's.
    """

    # Provided by Celery's RedisBackend, which every class using this mixin extends.
    expires: Any
    failure_expires: Any
    _get_result_meta: Any
    _get_task_meta_for: Any
    get_key_for_task: Any
    encode: Any
    set: Any
    _encode: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.policies = PolicyCache()

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: str | None = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        # Celery's BaseKeyValueStoreBackend._store_result, with the expiry chosen by policy.
        meta = self._get_result_meta(result=result, state=state, traceback=traceback, request=request)
        meta["task_id"] = bytes_to_str(task_id)
        # A result already stored as SUCCESS is never overwritten (Celery's guard
        # against a lost worker's late write).
        current_meta = self._get_task_meta_for(task_id)
        if current_meta["status"] == states.SUCCESS:
            return result
        try:
            self.set(self.get_key_for_task(task_id), self.encode(meta), expires=self.ttl_for(meta, state))
        except BackendStoreError as ex:
            raise BackendStoreError(str(ex), state=state, task_id=task_id) from ex
        return result

    def remainder_expires(self, state: str) -> int:
        """Celery's own expiry for a result no policy governs (0: none)."""
        return int((self.failure_expires if state == states.FAILURE else self.expires) or 0)

    def ttl_for(self, meta: dict[str, Any], state: str) -> int:
        """Seconds this result may live; 0 stores it without a TTL."""
        table = self.policies.table()
        if table is None:
            return 0  # policies unreadable so far: keep it; the enforcer sets its TTL later
        remainder = self.remainder_expires(state)
        found = verdict(
            table,
            task_id=meta["task_id"],
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


class RetentionRedisBackend(RetentionRedisMixin, RedisBackend):  # type: ignore[misc]
    """Celery's Redis backend, storing each task result with its policy's TTL.

    Configure it with Celery's ``class+url`` form::

        CELERY_RESULT_BACKEND = "retention_admin.backends.RetentionRedisBackend+redis://host:6379/0"
    """


class RetentionSentinelBackend(RetentionRedisMixin, SentinelBackend):  # type: ignore[misc]
    """Celery's Redis Sentinel backend, storing each task result with its policy's TTL.

    Configure it as Celery's own ``sentinel://`` backend, with the class in front::

        CELERY_RESULT_BACKEND = (
            "retention_admin.backends.RetentionSentinelBackend+"
            "sentinel://10.0.0.1:26379/0;sentinel://10.0.0.2:26379/0"
        )
        CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = {"master_name": "mymaster"}
    """
