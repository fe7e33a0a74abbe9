"""The `atelier` command as a user runs it on the hub's machine, against a real hub: it finds
the hub from atelier.yaml, its tokens expire, and its instance commands say what they do."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
import yaml
from conftest import BASE
from jupyterhub import orm

from atelier.hub.settings import PROJECT_ROOT

pytestmark = pytest.mark.e2e


def atelier(hub, *argv: str, token: str | None = None, **env: str) -> subprocess.CompletedProcess:
    """`atelier --config <the hub's> ...` with none of the caller's Atelier or hub variables."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("ATELIER_", "JUPYTERHUB_"))}
    if token:
        environ["JUPYTERHUB_API_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "atelier.hub.cli.main", "--config", str(hub.config), *argv],
        capture_output=True,
        text=True,
        env={**environ, **env},
        cwd="/",
    )


@pytest.fixture(scope="module")
def alice(hub) -> str:
    return hub.add_user("alice")


def table(output: str) -> list[dict]:
    header, *lines = output.splitlines()
    starts = [match.start() for match in re.finditer(r"\S+", header)]
    names = header.split()
    return [
        {
            name.lower(): line[start:end].strip()
            for name, start, end in zip(names, starts, [*starts[1:], None], strict=True)
        }
        for line in lines
    ]


def test_the_cli_finds_the_hub_of_this_machine_without_a_url(hub, alice):
    listing = atelier(hub, "instances", "list", token=alice)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.startswith("(none)") or "OWNER" in listing.stdout


def test_token_finds_the_hub_state_from_anywhere(hub, tmp_path):
    """With ATELIER_CONFIG naming a configuration whose data_dir is relative (as the default
    `.atelier`), run from `/`: the state is the project's, where `make run` keeps it."""
    config = yaml.safe_load(hub.config.read_text())
    config["data_dir"] = os.path.relpath(hub.dir / "data", PROJECT_ROOT)
    path = tmp_path / "atelier.yaml"
    path.write_text(yaml.safe_dump(config))
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ATELIER_")}
    minted = subprocess.run(
        [sys.executable, "-m", "atelier.hub.cli.main", "token", "admin"],
        capture_output=True,
        text=True,
        env={**environ, "ATELIER_CONFIG": str(path)},
        cwd="/",
    )
    assert minted.returncode == 0, minted.stderr
    assert hub.api("GET", "/user", minted.stdout.strip()).json()["name"] == "admin"


def minted(hub, *options: str) -> datetime | None:
    """A token `atelier token alice` mints, which the hub takes; when it expires (UTC)."""
    run = atelier(hub, "token", "alice", *options)
    assert run.returncode == 0, run.stderr
    token = run.stdout.strip()
    assert hub.api("GET", "/user", token).json()["name"] == "alice"
    db = orm.new_session_factory(f"sqlite:///{hub.dir / 'data' / 'jupyterhub.sqlite'}")()
    expires = orm.APIToken.find(db, token).expires_at
    db.close()
    return expires and expires.replace(tzinfo=UTC)


@pytest.mark.parametrize("options, days", [((), 30), (("--expires-in-days", "2"), 2)])
def test_minted_tokens_expire(hub, alice, options, days):
    expected = datetime.now(UTC) + timedelta(days=days)
    assert abs(minted(hub, *options) - expected) < timedelta(minutes=5)


def test_a_token_that_never_expires_is_asked_for(hub, alice):
    assert minted(hub, "--expires-in-days", "0") is None


def test_catalog_changes_from_the_cli_show_in_the_audit_log(hub):
    changed = atelier(hub, "images", "update", BASE, "--display-name", "Plain Python")
    assert changed.returncode == 0, changed.stderr
    events = hub.atelier("GET", "/audit", params={"action": "updateImage"}).json()["events"]
    assert [(e["actor"], e["resource"], e["result"]) for e in events][:1] == [
        ("cli:root", BASE, "success")
    ]


@pytest.fixture(scope="module")
def exp5(hub, alice) -> str:
    """alice's exp-5, created with the CLI at the default volume size, running."""
    created = atelier(
        hub, "instances", "create", "exp-5", "--image", BASE, "--spec", "cpu.2u4g", token=alice
    )
    assert created.returncode == 0, created.stderr

    def running() -> bool:
        shown = atelier(hub, "instances", "show", "exp-5", "--json", token=alice)
        return json.loads(shown.stdout)["status"] == "running"

    hub.wait_for(running, 60, "exp-5 running")
    return "exp-5"


def test_tables_show_the_real_volume_size(hub, alice, exp5):
    for action in (("list",), ("show", exp5)):
        shown = atelier(hub, "instances", *action, token=alice)
        [row] = [row for row in table(shown.stdout) if row["name"] == exp5]
        assert row["volume_gb"] == "5", action  # the default size, which nobody asked for


def test_show_json_is_the_one_instance(hub, alice, exp5):
    shown = json.loads(atelier(hub, "instances", "show", exp5, "--json", token=alice).stdout)
    assert (shown["owner"], shown["name"], shown["volume"]["size_gb"]) == ("alice", exp5, 5)


def test_expand_shows_the_new_size(hub, alice, exp5):
    expanded = atelier(hub, "instances", "expand", exp5, "--add-gb", "2", token=alice)
    assert expanded.returncode == 0, expanded.stderr
    [row] = table(expanded.stdout)
    assert row["volume_gb"] == "7"


def test_delete_asks_for_delete_volume_in_the_clis_own_words(hub, alice, exp5):
    refused = atelier(hub, "instances", "delete", exp5, token=alice)
    assert refused.returncode == 2
    assert refused.stderr == (
        f"atelier: deleting {exp5} deletes its work volume and every file on it: "
        "add --delete-volume to go ahead\n"
    )
    assert exp5 in hub.servers("alice")
    deleted = atelier(hub, "instances", "delete", exp5, "--delete-volume", token=alice)
    assert deleted.returncode == 0, deleted.stderr
    hub.wait_for(lambda: exp5 not in hub.servers("alice"), 60, "exp-5 deleted")
