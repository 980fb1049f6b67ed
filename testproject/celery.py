import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")

# include: the worker also loads the sample tasks (testproject is not an installed app).
app = Celery("testproject", include=["testproject.tasks"])
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
