"""Invitations: the inviter learns nothing about the address, nobody joins without opening the e-mailed link,
and a link works once, for a week, until revoked (tenants.invitations, portal/views/team.py)."""

import hashlib
import re
import smtplib
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.test import Client
from django.utils import timezone

from tenants.invitations import pending as invitations_pending
from tenants.models import Invitation, Membership
from tests.factories import USER_PASSWORD, MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db
NEW_PASSWORD = "plum tractor lantern 42"
LINK = re.compile(r"https?://[^/\s]+(/invite/[A-Za-z0-9_-]+/)")


def invite(client, email: str, role: str = "viewer"):
    return client.post("/team/invitations/", {"email": email, "role": role})


def link_in(message) -> str:
    return LINK.search(message.body).group(1)


def sign_up(client, path: str, username: str = "newcomer", **overrides):
    form = {
        "username": username,
        "first_name": "Noor",
        "last_name": "Haddad",
        "password1": NEW_PASSWORD,
        "password2": NEW_PASSWORD,
        **overrides,
    }
    return client.post(path, form)


def members_of(tenant) -> dict[str, str]:
    return dict(Membership.objects.for_tenant(tenant).values_list("user__email", "role"))


@pytest.mark.parametrize("known_spelling", ["known@example.com", "Known@Example.COM"])
def test_the_answer_is_the_same_for_known_and_unknown_addresses_and_nobody_is_added(
    world, owner_client, known_spelling
):
    tenant = world.tenants[0]
    UserFactory(email="known@example.com")  # has an account, in another tenant or none
    before = members_of(tenant)

    answers = []
    for email in (known_spelling, "unknown@example.com"):
        response = owner_client.post("/team/invitations/", {"email": email, "role": "admin"}, follow=True)
        said = [str(m).replace(email.lower(), "ADDRESS") for m in response.context["messages"]]
        answers.append((response.status_code, response.redirect_chain, said))

    assert answers[0] == answers[1]
    assert answers[0][2] == ["Invitation sent to ADDRESS. The link works for 7 days."]
    assert members_of(tenant) == before
    assert [m.to for m in mail.outbox] == [["known@example.com"], ["unknown@example.com"]]
    assert all(LINK.search(m.body) for m in mail.outbox)


def test_only_a_hash_of_the_link_token_is_stored(world, owner_client):
    invite(owner_client, "someone@example.com")
    token = link_in(mail.outbox[0]).split("/")[2]
    stored = Invitation.objects.get(email="someone@example.com")
    assert stored.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in str(list(Invitation.objects.values_list()))


def test_a_person_without_an_account_signs_up_through_the_link_and_joins_with_the_role(world, owner_client):
    tenant = world.tenants[0]
    invite(owner_client, "Noor@Example.com", "admin")
    path = link_in(mail.outbox[0])

    visitor = Client()
    page = visitor.get(path)
    assert page.status_code == 200 and 'name="password1"' in page.content.decode()
    assert page.headers["Cache-Control"].count("no-store") == 1  # the address is the secret

    response = sign_up(visitor, path)
    assert response.status_code == 302 and response["Location"] == "/"
    user = get_user_model().objects.get(username="newcomer")
    assert (user.email, user.first_name, user.check_password(NEW_PASSWORD)) == (
        "noor@example.com",
        "Noor",
        True,
    )
    assert members_of(tenant)["noor@example.com"] == "admin"
    assert tenant.name in visitor.get("/").content.decode()  # logged in, on the tenant's dashboard

    assert Client().get(path).status_code == 404  # single use
    assert sign_up(Client(), path, username="second").status_code == 404
    assert not get_user_model().objects.filter(username="second").exists()


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"password2": "something else entirely"}, "password2"),
        ({"password1": "password", "password2": "password"}, "password2"),  # too common
        ({"username": ""}, "username"),
        ({"first_name": ""}, "first_name"),
    ],
)
def test_a_refused_sign_up_names_the_field_and_creates_nothing(world, owner_client, overrides, field):
    invite(owner_client, "noor@example.com")
    path = link_in(mail.outbox[0])
    users_before = get_user_model().objects.count()

    response = sign_up(Client(), path, **overrides)

    assert response.status_code == 400
    assert response.context["form"].errors[field]
    assert get_user_model().objects.count() == users_before
    assert Client().get(path).status_code == 200  # the link still works


def test_a_person_with_an_account_logs_in_then_joins(world, owner_client):
    tenant = world.tenants[0]
    existing = UserFactory(username="kim", email="kim@example.com")
    invite(owner_client, "kim@example.com", "viewer")
    path = link_in(mail.outbox[0])

    visitor = Client()
    page = visitor.get(path).content.decode()
    assert "log in with it to accept" in page and 'name="password1"' not in page
    assert sign_up(visitor, path, username="kim2").status_code == 200  # no second account for the address
    assert not get_user_model().objects.filter(username="kim2").exists()

    logged_in = visitor.post(f"/login/?next={path}", {"username": "kim", "password": USER_PASSWORD})
    assert logged_in["Location"] == path
    assert "kim@example.com" not in members_of(tenant)  # opening the page joins nobody
    joined = visitor.post(path)
    assert joined.status_code == 302
    assert members_of(tenant)["kim@example.com"] == "viewer"
    assert visitor.get("/").context["request"].access.tenant == tenant
    assert Invitation.objects.get(email="kim@example.com").accepted_by == existing


def test_another_logged_in_account_cannot_accept(world, owner_client):
    invite(owner_client, "kim@example.com")
    path = link_in(mail.outbox[0])
    stranger = Client()
    stranger.force_login(UserFactory(email="other@example.com"))

    assert stranger.get(path).status_code == 403
    assert stranger.post(path).status_code == 403
    assert "other@example.com" not in members_of(world.tenants[0])
    assert Client().get(path).status_code == 200  # still open for its addressee


def test_an_expired_link_no_longer_works(world, owner_client):
    invite(owner_client, "late@example.com")
    path = link_in(mail.outbox[0])
    invitation = Invitation.objects.get(email="late@example.com")
    assert timedelta(days=6, hours=23) < invitation.expires_at - timezone.now() <= timedelta(days=7)

    Invitation.objects.filter(pk=invitation.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    assert Client().get(path).status_code == 404
    assert sign_up(Client(), path).status_code == 404
    assert (
        'data-invitation="late@example.com"' not in owner_client.get("/team/").content.decode()
    )  # not pending


def test_pending_invitations_are_listed_and_a_revoked_link_no_longer_works(world, owner_client):
    invite(owner_client, "pending@example.com", "admin")
    path = link_in(mail.outbox[0])
    page = owner_client.get("/team/").content.decode()
    assert 'data-invitation="pending@example.com"' in page

    invitation = Invitation.objects.get(email="pending@example.com")
    assert owner_client.post(f"/team/invitations/{invitation.pk}/revoke/").status_code == 302

    assert 'data-invitation="pending@example.com"' not in owner_client.get("/team/").content.decode()
    assert Client().get(path).status_code == 404
    assert owner_client.post(f"/team/invitations/{invitation.pk}/revoke/").status_code == 404


def test_inviting_again_replaces_the_earlier_link(world, owner_client):
    invite(owner_client, "again@example.com", "viewer")
    invite(owner_client, "again@example.com", "admin")
    first, second = link_in(mail.outbox[0]), link_in(mail.outbox[1])

    assert Client().get(first).status_code == 404
    assert Client().get(second).status_code == 200
    sign_up(Client(), second)
    assert members_of(world.tenants[0])["again@example.com"] == "admin"


def test_a_member_of_the_tenant_is_not_invited_again(world, owner_client):
    member = MembershipFactory(tenant=world.tenants[0], role="viewer").user
    response = owner_client.post(
        "/team/invitations/", {"email": member.email.upper(), "role": "owner"}, follow=True
    )
    assert "already a member" in response.content.decode()
    assert mail.outbox == [] and not Invitation.objects.exists()
    assert members_of(world.tenants[0])[member.email] == "viewer"


@pytest.mark.parametrize(
    "form, field",
    [
        ({"email": "not an address", "role": "viewer"}, "email"),
        ({"email": "", "role": "viewer"}, "email"),
        ({"email": "a@example.com", "role": "superuser"}, "role"),
        ({"email": "a@example.com"}, "role"),
    ],
)
def test_a_refused_invitation_names_the_field_and_stores_and_sends_nothing(world, owner_client, form, field):
    response = owner_client.post("/team/invitations/", form)
    assert response.status_code == 400
    assert response.context["form"].errors[field]
    assert mail.outbox == [] and not Invitation.objects.exists()


def test_admins_invite_admins_and_viewers_but_not_owners_and_viewers_invite_nobody(world, client):
    tenant = world.tenants[0]
    client.force_login(MembershipFactory(tenant=tenant, role="admin").user)
    assert invite(client, "helper@example.com", "admin").status_code == 302
    refused = invite(client, "boss@example.com", "owner")
    assert refused.status_code == 400 and refused.context["form"].errors["role"]

    client.force_login(MembershipFactory(tenant=tenant, role="viewer").user)
    assert invite(client, "friend@example.com", "viewer").status_code == 403
    assert client.post(f"/team/invitations/{Invitation.objects.get().pk}/revoke/").status_code == 403
    assert list(Invitation.objects.values_list("email", "revoked_at")) == [("helper@example.com", None)]
    assert [m.to for m in mail.outbox] == [["helper@example.com"]]


@pytest.mark.parametrize("token", ["x", "A" * 43, "A" * 500, "%00", "..", "a%20b", "%C3%A9"])
def test_a_made_up_link_is_a_404(db, token):
    assert Client().get(f"/invite/{token}/").status_code == 404


class UnreachableMailServer:
    """An e-mail backend whose server refuses: what Django's SMTP backend raises when it cannot send."""

    def __init__(self, **kwargs):
        pass

    def send_messages(self, messages):
        raise smtplib.SMTPServerDisconnected("connection closed")


def test_an_invitation_whose_mail_cannot_be_sent_is_not_left_open(world, owner_client, settings):
    settings.EMAIL_BACKEND = f"{__name__}.UnreachableMailServer"
    response = owner_client.post(
        "/team/invitations/", {"email": "lost@example.com", "role": "viewer"}, follow=True
    )
    assert [str(m) for m in response.context["messages"]] == [
        "The e-mail could not be sent, so the invitation was withdrawn. Try again later."
    ]
    assert not invitations_pending(world.tenants[0])
