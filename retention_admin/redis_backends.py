"""Celery's Redis backends with retention policies: the write path is RetentionRedisMixin.

Kept apart from backends.py because Celery's redis backend module needs redis-py
(the ``[redis]`` extra); ``retention_admin.backends.RetentionRedisBackend`` still
names these classes (resolved on first use).
"""

from __future__ import annotations

from celery.backends.redis import RedisBackend, SentinelBackend

from .backends import RetentionRedisMixin


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
