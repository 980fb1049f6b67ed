"""Settings for ``make demo``: the test project plus the demo app, on a throwaway SQLite file.

Never use these outside the demo: DEBUG is on and ``demo_superuser`` creates
``admin``/``admin``. ``DATABASE_URL`` is ignored on purpose, so ``make demo``
cannot write its generated history into a real database.
"""

from .settings import *  # noqa: F403
from .settings import BASE_DIR, INSTALLED_APPS

DEBUG = True

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": BASE_DIR / "var" / "demo.sqlite3",
        "OPTIONS": {"timeout": 30},
    }
}

INSTALLED_APPS = [*INSTALLED_APPS, "testproject.demo"]

# No broker, no worker: admin actions that start Celery tasks run them in-process.
CELERY_BROKER_URL = "memory://"
CELERY_TASK_ALWAYS_EAGER = True

# Archive policies (audit-30d, compliance-90d) archive into this directory.
RETENTION_ADMIN = {"ARCHIVE_DIR": str(BASE_DIR / "var" / "demo-archive")}
