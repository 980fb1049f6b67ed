from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class RetentionAdminConfig(AppConfig):
    name = "retention_admin"
    verbose_name = _("Result retention")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
        from . import redis_holds

        # Holds reach the Redis result keys when they are saved or deleted.
        redis_holds.connect()
