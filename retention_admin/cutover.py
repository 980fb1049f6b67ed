"""The cut-over result backend: from Redis to the database with no result stranded.

Owns ``RetentionCutoverBackend``, the backend workers run while results move from
Redis to the database (``migrate_results``). It writes only to the database
(it is a ``RetentionDatabaseBackend``) and reads the database first, then the
Redis store results went to before; so a result stored before the switch stays
readable until it is copied, and one stored during the copy is never in Redis at
all. It must not copy results (``transfer.py`` does) nor write to Redis, except
to forget what a caller asks to forget.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from celery import states
from celery.app.backends import by_url
from celery.exceptions import ImproperlyConfigured

from .backends import RetentionDatabaseBackend

logger = logging.getLogger(__name__)

FORM = "retention_admin.backends.RetentionCutoverBackend+redis://host:6379/0"


class RetentionCutoverBackend(RetentionDatabaseBackend):
    """Writes to the database; reads the database, then the old Redis store.

    The old store is named after the ``+``, as the Redis backends themselves are
    (Celery's ``class+URL`` form), so the whole old value of the setting can follow it::

        CELERY_RESULT_BACKEND = "retention_admin.backends.RetentionCutoverBackend+redis://host:6379/0"
        CELERY_RESULT_BACKEND = (
            "retention_admin.backends.RetentionCutoverBackend+"
            "retention_admin.backends.RetentionRedisBackend+redis://host:6379/0"
        )

    ``result_backend_transport_options`` (``global_keyprefix``, ``master_name``)
    and the ``redis_*`` settings keep applying to the old store.
    """

    def __init__(self, app: Any = None, url: str | None = None, **kwargs: Any) -> None:
        from celery.backends.redis import RedisBackend  # needs redis-py (the [redis] extra)

        super().__init__(app=app, url=url, **kwargs)
        if not url:
            raise ImproperlyConfigured(
                f"RetentionCutoverBackend needs the Redis store it reads from after a '+': {FORM}"
            )
        cls, old_url = cast(Any, by_url(url, self.app.loader))  # the stubs have it return one class
        if not (isinstance(cls, type) and issubclass(cls, RedisBackend)):
            raise ImproperlyConfigured(
                f"RetentionCutoverBackend reads old results from Redis; {cls!r} is not a Redis backend: {FORM}"
            )
        self.old: Any = cls(app=self.app, url=old_url)

    def as_uri(self, include_password: bool = False) -> str:
        return f"django-db, then {self.old.as_uri(include_password)}"

    def _from_old(self, method: Any, *args: Any) -> Any:
        """Ask the old store; None when it cannot answer (the database's answer stands)."""
        from redis.exceptions import RedisError

        try:
            return method(*args)
        except RedisError as exc:
            logger.warning("retention_admin: the old result store %s did not answer: %s", self.old.as_uri(), exc)
            return None

    def _get_task_meta_for(self, task_id: str) -> Any:
        meta = super()._get_task_meta_for(task_id)
        # No row (a stored row always has a date): stored before the switch, perhaps.
        if meta.get("status") == states.PENDING and meta.get("date_done") is None:
            old = self._from_old(self.old._get_task_meta_for, task_id)
            if old and old.get("status") != states.PENDING:
                return old
        return meta

    def _restore_group(self, group_id: str) -> Any:
        meta = super()._restore_group(group_id)
        if meta is None or meta.get("result") is None:
            return self._from_old(self.old._restore_group, group_id) or meta
        return meta

    def _forget(self, task_id: str) -> None:
        # Forgotten in both, or the old copy would be read again.
        super()._forget(task_id)
        self._from_old(self.old._forget, task_id)

    def _delete_group(self, group_id: str) -> None:
        super()._delete_group(group_id)
        self._from_old(self.old._delete_group, group_id)

    def on_chord_part_return(self, request: Any, state: str, result: Any, **kwargs: Any) -> None:
        from django_celery_results.models import ChordCounter

        group_id = getattr(request, "group", None)
        if group_id and getattr(request, "id", None) and not ChordCounter.objects.filter(group_id=group_id).exists():
            # A chord applied before the switch counts its parts in Redis (its size
            # key was set there): it completes there, or its body would never run.
            size_key = self.old.get_key_for_group(group_id, ".s")
            if self._from_old(self.old.client.exists, size_key):
                return self.old.on_chord_part_return(request, state, result, **kwargs)  # type: ignore[no-any-return]
        return super().on_chord_part_return(request, state, result, **kwargs)  # type: ignore[no-any-return]
