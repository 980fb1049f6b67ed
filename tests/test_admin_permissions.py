"""Each admin view: anonymous users go to login, staff without the permission get no
button and a 403, staff with it get through; state changes are POST with CSRF."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client, override_settings
from django.urls import reverse

from retention_admin.executor import Options, Selection, run_cleanup
from retention_admin.models import ArchiveBatch, RetentionHold, RetentionPolicy, RetentionTier

pytestmark = pytest.mark.django_db
DAY = timedelta(days=1)

# Enough to open every page of the app (view permissions), and nothing more.
VIEW_PERMS = [
    "retention_admin.view_retentiontier", "retention_admin.view_retentionpolicy",
    "retention_admin.view_retentionhold", "retention_admin.view_cleanuprun",
    "retention_admin.view_archivebatch", "django_celery_results.view_taskresult",
]


def staff(name: str, *perms: str) -> User:
    user = User.objects.create_user(name, f"{name}@example.com", "pw", is_staff=True)
    for perm in [*VIEW_PERMS, *perms]:
        app_label, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return user


def client_for(user: User | None, enforce_csrf: bool = False) -> Client:
    client = Client(enforce_csrf_checks=enforce_csrf)
    if user is not None:
        client.force_login(user)
    return client


@pytest.fixture
def archive_batch(tmp_path: Path, make_result):
    directory = tmp_path / "archive"
    directory.mkdir()
    with override_settings(RETENTION_ADMIN={"ARCHIVE_DIR": str(directory)}):
        RetentionPolicy.objects.create(
            name="audit", tier=RetentionTier.objects.get(slug="daily"), priority=1, archive=True,
            task_name_pattern="audit.*", keep_for=DAY,
        )
        make_result(task_id="a1", task_name="audit.x", age=5 * DAY)
        run_cleanup(Selection(policies=["audit"]), Options())
        yield ArchiveBatch.objects.get()


@dataclass
class View:
    name: str
    url_name: str
    method: str
    perm: str  # what lets a staff user through
    page: str | None = None  # the page holding the button, and the button's marker
    button: str | None = None
    ok: tuple[int, ...] = (200, 302)

    def url(self, obj_id: int | None) -> str:
        return reverse(self.url_name, args=[obj_id] if obj_id is not None else [])


def tier_id() -> int:
    return RetentionTier.objects.get(slug="daily").pk


def policy_id() -> int:
    return RetentionPolicy.objects.get(name="failures-7d").pk


VIEWS = [
    View("tier dry run", "admin:retention_admin_retentiontier_dry_run", "post", "retention_admin.run_cleanup",
         "admin:retention_admin_retentiontier_change", 'id="tier-dry-run"'),
    View("tier run now", "admin:retention_admin_retentiontier_run_now", "post", "retention_admin.run_cleanup",
         "admin:retention_admin_retentiontier_change", 'id="tier-run-now"'),
    View("archive verify", "admin:retention_admin_archivebatch_verify", "post", "retention_admin.verify_archive",
         "admin:retention_admin_archivebatch_change", 'id="archive-verify"'),
    View("archive download", "admin:retention_admin_archivebatch_download", "get", "retention_admin.download_archive",
         "admin:retention_admin_archivebatch_change", 'id="archive-download"'),
    View("archive preview", "admin:retention_admin_archivebatch_preview", "get", "retention_admin.preview_archive",
         "admin:retention_admin_archivebatch_change", 'id="archive-preview"'),
    View("archive restore", "admin:retention_admin_archivebatch_restore", "post", "retention_admin.restore_archive",
         "admin:retention_admin_archivebatch_change", 'id="archive-restore"'),
]


def object_id(view: View, batch: ArchiveBatch) -> int:
    return batch.pk if "archivebatch" in view.url_name else tier_id()


def call(client: Client, view: View, obj_id: int):
    data = {"confirm": "1"} if "restore" in view.url_name else {}
    return getattr(client, view.method)(view.url(obj_id), data)


@pytest.mark.parametrize("view", VIEWS, ids=lambda v: v.name)
def test_anonymous_users_are_sent_to_login(view, archive_batch):
    response = call(client_for(None), view, object_id(view, archive_batch))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


@pytest.mark.parametrize("view", VIEWS, ids=lambda v: v.name)
def test_staff_without_the_permission_see_no_button_and_get_403(view, archive_batch):
    client = client_for(staff("viewer"))
    obj_id = object_id(view, archive_batch)
    page = client.get(reverse(view.page, args=[obj_id]))
    assert page.status_code == 200
    assert view.button not in page.content.decode()
    assert call(client, view, obj_id).status_code == 403


@pytest.mark.parametrize("view", VIEWS, ids=lambda v: v.name)
def test_staff_with_the_permission_see_the_button_and_get_through(view, archive_batch):
    client = client_for(staff("operator", view.perm))
    obj_id = object_id(view, archive_batch)
    page = client.get(reverse(view.page, args=[obj_id]))
    assert view.button in page.content.decode()
    assert call(client, view, obj_id).status_code in view.ok


@pytest.mark.parametrize("view", [v for v in VIEWS if v.method == "post" and "restore" not in v.url_name], ids=lambda v: v.name)
def test_state_changes_refuse_get(view, archive_batch):
    client = client_for(staff("operator", view.perm))
    assert client.get(view.url(object_id(view, archive_batch))).status_code == 405


@pytest.mark.parametrize("view", [v for v in VIEWS if v.method == "post"], ids=lambda v: v.name)
def test_state_changes_need_the_csrf_token(view, archive_batch):
    client = client_for(staff("operator", view.perm), enforce_csrf=True)
    assert call(client, view, object_id(view, archive_batch)).status_code == 403


def test_restore_get_is_only_a_confirmation_page(archive_batch, make_result):
    from django_celery_results.models import TaskResult

    client = client_for(staff("operator", "retention_admin.restore_archive"))
    response = client.get(reverse("admin:retention_admin_archivebatch_restore", args=[archive_batch.pk]))
    assert response.status_code == 200 and not TaskResult.objects.filter(task_id="a1").exists()


# -- pages gated by view permissions ------------------------------------------------


@pytest.mark.parametrize(
    "url_name, args",
    [
        ("admin:retention_admin_explain", None),
        ("admin:retention_admin_retentionpolicy_preview", "policy"),
    ],
)
def test_read_only_pages_need_the_view_permission(url_name, args):
    url = reverse(url_name, args=[policy_id()] if args else [])
    anonymous = client_for(None).get(url)
    assert anonymous.status_code == 302 and "/admin/login/" in anonymous["Location"]
    bare = User.objects.create_user("bare", "b@example.com", "pw", is_staff=True)
    assert client_for(bare).get(url).status_code == 403
    assert client_for(staff("viewer")).get(url).status_code == 200


# -- actions ------------------------------------------------------------------------


def test_place_hold_action_needs_place_hold(make_result):
    row = make_result()
    url = reverse("admin:django_celery_results_taskresult_changelist")
    post = {"action": "place_hold", "_selected_action": [str(row.pk)], "apply": "1", "reason": "r"}
    viewer = client_for(staff("viewer"))
    assert 'value="place_hold"' not in viewer.get(url).content.decode()
    viewer.post(url, post)
    assert not RetentionHold.objects.exists()
    holder = client_for(staff("holder", "retention_admin.place_hold"))
    assert 'value="place_hold"' in holder.get(url).content.decode()
    holder.post(url, post)
    assert RetentionHold.objects.filter(task_id=row.task_id).exists()


def test_lifting_and_adding_holds_need_place_hold():
    hold = RetentionHold.objects.create(task_id="t1", reason="x")
    changelist = reverse("admin:retention_admin_retentionhold_changelist")
    # Model permissions alone are not enough: placing and lifting holds is place_hold's.
    clerk = client_for(staff("clerk", "retention_admin.add_retentionhold", "retention_admin.change_retentionhold"))
    assert clerk.get(reverse("admin:retention_admin_retentionhold_add")).status_code == 403
    assert 'value="lift_holds"' not in clerk.get(changelist).content.decode()
    clerk.post(changelist, {"action": "lift_holds", "_selected_action": [str(hold.pk)]})
    hold.refresh_from_db()
    assert hold.is_active()
    keeper = client_for(staff("keeper", "retention_admin.place_hold", "retention_admin.add_retentionhold",
                              "retention_admin.change_retentionhold"))
    assert keeper.get(reverse("admin:retention_admin_retentionhold_add")).status_code == 200
    keeper.post(changelist, {"action": "lift_holds", "_selected_action": [str(hold.pk)]})
    hold.refresh_from_db()
    assert not hold.is_active()


def test_verify_action_needs_verify_archive(archive_batch):
    url = reverse("admin:retention_admin_archivebatch_changelist")
    assert 'value="verify_batches"' not in client_for(staff("viewer")).get(url).content.decode()
    assert 'value="verify_batches"' in client_for(staff("checker", "retention_admin.verify_archive")).get(url).content.decode()
