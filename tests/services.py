"""The loopback servers the suite uses, and how to tell whether each answers."""

from __future__ import annotations

import os
import socket

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/retention_admin")
MARIADB_URL = os.environ.get("TEST_MARIADB_URL", "mysql://root@127.0.0.1:3306/retention_admin")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")

DATABASES = {
    "sqlite": "sqlite:///" + os.path.join(os.path.dirname(os.path.dirname(__file__)), "var", "test.sqlite3"),
    "postgresql": POSTGRES_URL,
    "mariadb": MARIADB_URL,
}

PORTS = {
    "postgresql": ("127.0.0.1", 5432),
    "mariadb": ("127.0.0.1", 3306),
    "redis": ("127.0.0.1", 6379),
    "rabbitmq": ("127.0.0.1", 5672),
}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def service_problem(name: str) -> str | None:
    """Why the named server cannot be used, or None when it answers."""
    if name == "sqlite":
        return None
    host, port = PORTS[name]
    try:
        with socket.create_connection((host, port), timeout=2):
            pass
    except OSError as exc:
        return f"{name} at {host}:{port} is not reachable ({exc.strerror or exc})"
    if name == "redis":
        try:
            import redis

            redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
        except Exception as exc:  # noqa: BLE001 - any failure means "not usable"
            return f"redis at {REDIS_URL} does not answer PING ({exc})"
    return None
