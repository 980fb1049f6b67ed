#!/usr/bin/env bash
# `make dist`'s last step: install the built wheel into a fresh virtualenv and run
# `manage.py check` on a minimal project that uses it as the README says, so a
# wheel missing a module, a template or a migration fails here, not for a user.
set -euo pipefail
wheel=$(ls -t dist/*.whl | head -1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"${PYTHON:-python3}" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet "$wheel"
mkdir -p "$work/site/proj"
# The Celery app as the README wires it: it reads the CELERY_* settings.
cat > "$work/site/proj/celery.py" <<'PY'
from celery import Celery

app = Celery("proj")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
PY
echo "from .celery import app" > "$work/site/proj/__init__.py"
cat > "$work/site/proj/settings.py" <<'PY'
SECRET_KEY = "wheel-check"
INSTALLED_APPS = [
    "django.contrib.admin", "django.contrib.auth", "django.contrib.contenttypes",
    "django.contrib.sessions", "django.contrib.messages",
    "django_celery_results", "django_celery_beat", "retention_admin",
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "db.sqlite3"}}
USE_TZ = True
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True,
              "OPTIONS": {"context_processors": ["django.contrib.auth.context_processors.auth",
                                                 "django.contrib.messages.context_processors.messages",
                                                 "django.template.context_processors.request"]}}]
MIDDLEWARE = ["django.contrib.sessions.middleware.SessionMiddleware",
              "django.contrib.auth.middleware.AuthenticationMiddleware",
              "django.contrib.messages.middleware.MessageMiddleware"]
CELERY_RESULT_BACKEND = "retention_admin.backends.RetentionDatabaseBackend"
CELERY_BEAT_SCHEDULER = "retention_admin.schedulers.RetentionScheduler"
CELERY_RESULT_EXTENDED = True
PY
cd "$work/site"
export DJANGO_SETTINGS_MODULE=proj.settings PYTHONPATH="$work/site"
"$work/venv/bin/python" -m django migrate --noinput -v 0
"$work/venv/bin/python" -m django check --database default --fail-level WARNING
"$work/venv/bin/python" -m django cleanup_results --dry-run --no-progress
echo "dist: $(basename "$wheel") installs and passes manage.py check in a fresh venv"
