"""``manage.py demo_superuser``: the demo's ``admin``/``admin`` superuser (demo settings only)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

DEMO_SETTINGS = "testproject.demo_settings"
USERNAME = "admin"
PASSWORD = "admin"
URL = "http://127.0.0.1:8000/admin/"


class Command(BaseCommand):
    help = (
        f"Create the demo superuser {USERNAME!r} with password {PASSWORD!r}, or reset its "
        f"password. Runs only with DEBUG on and DJANGO_SETTINGS_MODULE={DEMO_SETTINGS}."
    )

    def handle(self, **options: Any) -> None:
        module = getattr(settings, "SETTINGS_MODULE", None)
        if module != DEMO_SETTINGS or not settings.DEBUG:
            raise CommandError(
                f"demo_superuser creates a superuser with a well-known password, so it runs only "
                f"with the demo settings (DJANGO_SETTINGS_MODULE={DEMO_SETTINGS}, DEBUG on); "
                f"the settings are {module or 'not from a module'} with DEBUG "
                f"{'on' if settings.DEBUG else 'off'}."
            )
        User = get_user_model()
        user = User._default_manager.filter(**{User.USERNAME_FIELD: USERNAME}).first()
        created = user is None
        if user is None:
            user = User._default_manager.create_superuser(
                **{User.USERNAME_FIELD: USERNAME}, email="admin@example.com", password=PASSWORD
            )
        else:
            user.set_password(PASSWORD)
            user.is_active = user.is_staff = user.is_superuser = True
            user.save()
        self.stdout.write(
            self.style.SUCCESS(
                f"{'Created' if created else 'Reset'} the demo superuser (demo settings only)."
            )
        )
        self.stdout.write(f"  Admin:    {URL}\n  Username: {USERNAME}\n  Password: {PASSWORD}")
