"""Retention policies, tiered schedules and safe cleanup for Celery results."""

__version__ = "0.1.0"
