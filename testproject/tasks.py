"""Real tasks for the end-to-end test: their results are what the cleanup deletes."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="testproject.tasks.add")
def add(x: int, y: int) -> int:
    return x + y


@shared_task(name="testproject.tasks.fail")
def fail(message: str = "failed on purpose") -> None:
    raise ValueError(message)
