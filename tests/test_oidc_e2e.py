"""Sign-in with a generic OIDC provider (OAuthenticator), tested against a provider on loopback;
the provider's group claims become JupyterHub groups, that is, workspace membership."""

import pytest
import requests
from conftest import BASE, Hub
from oidc_provider import Provider

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def oidc():
    provider = Provider(
        {"preferred_username": "olga", "email": "olga@example.org", "groups": ["vision", "ml"]}
    )
    yield provider
    provider.stop()


def test_oidc_sign_in_and_group_claims_as_workspaces(envs_dir, oidc):
    hub = Hub(envs_dir, auth=oidc.settings())
    try:
        assert "sign in with oidc" in hub.sign_in_line
        assert hub.admin_password is None  # no local passwords with an identity provider
        # the vision workspace exists before olga first signs in
        assert (
            hub.atelier(
                "POST", "/workspaces", json={"name": "vision", "max_instances": 2}
            ).status_code
            == 201
        )

        browser = requests.Session()
        home = browser.get(f"{hub.url}/hub/oauth_login?next=/hub/home", timeout=60)
        assert home.status_code == 200 and "Your instances" in home.text
        olga = hub.api("GET", "/users/olga").json()
        assert sorted(olga["groups"]) == ["ml", "vision"] and olga["admin"] is False
        workspace = hub.atelier("GET", "/workspaces/vision").json()
        assert workspace["members"] == ["olga"]

        # a user the provider does not vouch for gets nowhere
        stranger = requests.Session().get(
            f"{hub.url}/hub/oauth_callback?code=forged&state=x", timeout=30
        )
        assert stranger.status_code >= 400
        logins = hub.atelier("GET", "/audit?action=login&user=olga").json()["events"]
        assert [e["result"] for e in logins] == ["success"]

        token = hub.add_user("olga")
        made = hub.atelier(
            "POST",
            "/instances",
            token,
            json={"name": "o1", "image": BASE, "spec": "cpu.2u4g", "workspace": "vision"},
        )
        assert made.status_code == 201 and made.json()["workspace"] == "vision"
        hub.atelier("DELETE", "/instances/olga/o1?confirm=delete-volume", token)
    finally:
        hub.stop()


def test_a_user_outside_the_allowed_groups_is_refused_and_audited(envs_dir, oidc):
    hub = Hub(envs_dir, auth={**oidc.settings(), "allowed_groups": ["admins"]})
    try:
        refused = requests.Session().get(f"{hub.url}/hub/oauth_login?next=/hub/home", timeout=60)
        assert refused.status_code == 403
        assert hub.api("GET", "/users/olga").status_code == 404  # never created
        events = hub.atelier("GET", "/audit?action=login").json()["events"]
        assert [(e["actor"], e["result"], e["reason"]) for e in events] == [
            ("olga", "failure", "not in allowed_groups")
        ]
    finally:
        hub.stop()
