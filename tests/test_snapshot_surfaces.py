"""Every surface of "save as image" but the API itself, without a hub: the SDK, the instance's
jupyter-server extension and the CLI against a small stand-in of the Atelier API on loopback,
the home page's views, and the OpenAPI document."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import requests
from conftest import BASE, ROOT, free_port
from standin import FakeAtelier, refusal, serve

from atelier.hub.cli.main import main
from atelier.hub.service.openapi import document
from atelier.hub.service.server import all_routes
from atelier.hub.web.pages import SAVED_TITLE, instance_rows, options_form
from atelier.sdk import AtelierError, Client
from atelier.spawner.core import Catalog, Image, Limits, Spec


# a stand-in of the Atelier API ----------------------------------------------------------------
def operation(status="running", phase="measuring", percent=0, reason=None, **more) -> dict:
    return {
        "id": "op1",
        "kind": "saveImage",
        "owner": "alice",
        "resource": "alice/lab",
        "target": "alice/my-env",
        "status": status,
        "phase": phase,
        "done_bytes": percent,
        "total_bytes": 100,
        "percent": percent,
        "reason": reason,
        "created": "2026-01-01T00:00:00+00:00",
        "updated": "2026-01-01T00:00:00+00:00",
        **more,
    }


@pytest.fixture(scope="module")
def stand_in():
    fake = FakeAtelier()
    server = serve(fake)
    yield fake
    server.shutdown()
    server.server_close()


@pytest.fixture
def atelier_api(stand_in):
    """The stand-in, with no answers and nothing seen yet."""
    stand_in.answers.clear()
    stand_in.seen.clear()
    return stand_in


@pytest.fixture
def inside_lab(monkeypatch, atelier_api):
    """The environment of alice's instance `lab`, as its spawner sets it."""
    monkeypatch.setenv("ATELIER_API_URL", atelier_api.url)
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "server-token")
    monkeypatch.setenv("JUPYTERHUB_USER", "alice")
    monkeypatch.setenv("JUPYTERHUB_SERVER_NAME", "lab")
    return atelier_api


SAVE = ("POST", "/services/atelier/api/v1/instances/alice/lab/images")
OPERATION = ("GET", "/services/atelier/api/v1/operations/op1")


# the SDK ----------------------------------------------------------------------------------------
def test_inside_an_instance_save_image_saves_this_one_and_waits_for_it(inside_lab):
    inside_lab.answer(*SAVE, (202, operation()))
    inside_lab.answer(
        *OPERATION,
        (200, operation(phase="saving", percent=40)),
        (200, operation("succeeded", "done", 100)),
    )
    done = Client().save_image(name="my-env", wait=True)
    assert (done["status"], done["target"]) == ("succeeded", "alice/my-env")
    post, *polls = inside_lab.seen
    assert (post.method, post.path, post.body) == ("POST", SAVE[1], {"name": "my-env"})
    assert post.authorization == "token server-token"  # the instance's own token
    assert [p.path for p in polls] == [OPERATION[1]] * 2


def test_save_image_answers_at_once_with_the_operation_and_sends_what_is_given(inside_lab):
    inside_lab.answer(
        "POST", "/services/atelier/api/v1/instances/bob/exp/images", (202, operation())
    )
    started = Client().save_image(
        "exp", "my-env", owner="bob", display_name="My env", description="torch and friends"
    )
    assert started["status"] == "running"
    [post] = inside_lab.seen
    assert post.body == {
        "name": "my-env",
        "display_name": "My env",
        "description": "torch and friends",
    }


def test_a_failed_save_raises_naming_its_reason(inside_lab):
    inside_lab.answer(*SAVE, (202, operation()))
    failed = operation("failed", "saving", 10, "the save failed: No space left on device")
    inside_lab.answer(*OPERATION, (200, failed))
    with pytest.raises(AtelierError) as error:
        Client().save_image(name="my-env", wait=True)
    assert error.value.code == "failed"
    assert error.value.message == "the save failed: No space left on device"
    assert error.value.operation["status"] == "failed"


def test_a_refused_save_raises_with_the_apis_status_code_and_field(inside_lab):
    taken = refusal("exists", "you already have an image named my-env", "name")
    inside_lab.answer(*SAVE, (409, taken))
    with pytest.raises(AtelierError) as error:
        Client().save_image(name="my-env")
    assert (error.value.status, error.value.code, error.value.field) == (409, "exists", "name")
    assert str(error.value) == "409 exists: name: you already have an image named my-env"


def test_waiting_gives_up_after_the_timeout_naming_the_phase(inside_lab):
    inside_lab.answer(*OPERATION, (200, operation(phase="saving", percent=12)))
    seen = []
    started = time.monotonic()
    with pytest.raises(AtelierError) as error:
        Client().wait_for_operation("op1", timeout=0.3, every=0.05, progress=seen.append)
    assert time.monotonic() - started < 2
    assert error.value.code == "timeout"
    assert "still running (saving, 12%) after 0.3 s" in error.value.message
    assert seen and seen[-1]["percent"] == 12


def test_save_image_needs_a_name_and_outside_an_instance_the_instance(monkeypatch, atelier_api):
    monkeypatch.delenv("JUPYTERHUB_SERVER_NAME", raising=False)
    client = Client(atelier_api.url, "t")
    with pytest.raises(AtelierError) as error:
        client.save_image("lab")
    assert error.value.field == "name"
    with pytest.raises(AtelierError) as error:
        client.save_image(name="my-env")
    assert error.value.field == "instance"
    assert atelier_api.seen == []  # nothing was sent


def test_operations_and_snapshot_names_keep_their_one_slash(inside_lab):
    images = "/services/atelier/api/v1/images"
    inside_lab.answer("GET", "/services/atelier/api/v1/operations", (200, {"operations": []}))
    inside_lab.answer("GET", f"{images}/alice/my-env", (200, {"name": "alice/my-env"}))
    inside_lab.answer("PATCH", f"{images}/alice/my-env", (200, {"name": "alice/my-env"}))
    inside_lab.answer("DELETE", f"{images}/alice/my%20env", (204, ""))
    client = Client()
    assert client.operations() == []
    assert client.image("alice/my-env") == {"name": "alice/my-env"}
    client.share_image("my-env", "vision")  # yours: the owner is implied
    client.unshare_image("alice/my-env")
    client.delete_image("alice/my env")
    paths = [(s.method, s.path, s.body) for s in inside_lab.seen]
    assert paths[1:5] == [
        ("GET", f"{images}/alice/my-env", None),
        ("PATCH", f"{images}/alice/my-env", {"visibility": "shared", "workspace": "vision"}),
        ("PATCH", f"{images}/alice/my-env", {"visibility": "private", "workspace": None}),
        ("DELETE", f"{images}/alice/my%20env", None),
    ]


@pytest.mark.parametrize(
    "path",
    ["sdk/__init__.py", "extensions/__init__.py", "extensions/images.py", "extensions/ssh.py"],
)
def test_what_runs_inside_images_is_python_3_9(path):
    """Images may run Python 3.9 (the Ascend one): no syntax of later versions."""
    ast.parse((ROOT / path).read_text(), path, feature_version=(3, 9))


# the extension ----------------------------------------------------------------------------------
IDENTITY = '''
from jupyter_server.auth.identity import IdentityProvider, User


class Named(IdentityProvider):
    """Token sign-in as jupyter-server does it, as the user the test names (alice by default)."""

    def generate_anonymous_user(self, handler):
        return User(handler.request.headers.get("X-Test-User", "alice"))
'''


@pytest.fixture(scope="module")
def lab_server(tmp_path_factory, stand_in):
    """A jupyter-server with Atelier's extension, as in alice's instance `lab` (its token is
    `lab-token`; JUPYTERHUB_API_TOKEN is the server's own token for the Atelier API)."""
    tmp_path = tmp_path_factory.mktemp("lab")
    (tmp_path / "named_identity.py").write_text(textwrap.dedent(IDENTITY))
    port = free_port()
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("JUPYTERHUB_", "ATELIER_"))},
        "PYTHONPATH": str(tmp_path),
        "ATELIER_API_URL": stand_in.url,
        "JUPYTERHUB_API_TOKEN": "server-token",
        "JUPYTERHUB_USER": "alice",
        "JUPYTERHUB_SERVER_NAME": "lab",
    }
    command = [
        str(Path(sys.executable).parent / "jupyter-server"),
        f"--port={port}",
        "--ip=127.0.0.1",
        "--no-browser",
        "--allow-root",
        f"--ServerApp.root_dir={tmp_path}",
        "--ServerApp.base_url=/user/alice/lab/",
        '--ServerApp.jpserver_extensions={"atelier.extensions": True}',
        "--ServerApp.identity_provider_class=named_identity.Named",
        "--IdentityProvider.token=lab-token",
    ]
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/user/alice/lab/"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            requests.get(url + "api/status", timeout=1)
            break
        except requests.ConnectionError:
            assert server.poll() is None, (tmp_path / "server.log").read_text()
            time.sleep(0.2)
    yield url
    server.terminate()
    server.wait(10)
    log.close()


@pytest.fixture
def lab(lab_server, atelier_api):
    return lab_server, atelier_api


def lab_token(user: str = "alice") -> dict:
    return {"Authorization": "token lab-token", "X-Test-User": user}


def test_the_extension_saves_this_instance_with_the_servers_own_token(lab):
    url, api = lab
    api.answer(*SAVE, (202, operation()))
    api.answer(*OPERATION, (200, operation(phase="saving", percent=40)))
    saved = requests.post(url + "atelier/images", json={"name": "my-env"}, headers=lab_token())
    assert saved.status_code == 202 and saved.json() == operation()
    [post] = api.seen
    assert (post.method, post.path, post.body) == ("POST", SAVE[1], {"name": "my-env"})
    assert post.authorization == "token server-token"
    followed = requests.get(url + "atelier/operations/op1", headers=lab_token())
    assert followed.status_code == 200 and followed.json()["percent"] == 40


def test_the_extension_passes_refusals_on_as_they_are(lab):
    url, api = lab
    busy = refusal("conflict", "alice/lab is being saved already; wait for it", "instance")
    api.answer(*SAVE, (409, busy))
    api.answer(*OPERATION, (404, refusal("not_found", "no operation op1")))
    refused = requests.post(url + "atelier/images", json={"name": "x"}, headers=lab_token())
    assert (refused.status_code, refused.json()) == (409, busy)
    missing = requests.get(url + "atelier/operations/op1", headers=lab_token())
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_the_extension_lists_this_instances_operations_only(lab):
    url, api = lab
    other = operation(id="op2", resource="alice/other")
    api.answer(
        "GET", "/services/atelier/api/v1/operations", (200, {"operations": [operation(), other]})
    )
    listed = requests.get(url + "atelier/operations", headers=lab_token())
    assert [o["id"] for o in listed.json()["operations"]] == ["op1"]


def test_only_the_owner_signed_in_reaches_the_extension(lab):
    url, api = lab
    api.answer(*SAVE, (202, operation()))
    anonymous = requests.post(url + "atelier/images", json={"name": "x"})
    assert anonymous.status_code == 403
    wrong = requests.post(
        url + "atelier/images", json={"name": "x"}, headers={"Authorization": "token nope"}
    )
    assert wrong.status_code == 403
    someone = requests.post(url + "atelier/images", json={"name": "x"}, headers=lab_token("bob"))
    assert someone.status_code == 403
    assert someone.json()["error"]["message"] == "only alice saves this instance as an image"
    assert requests.get(url + "atelier/operations/op1", headers=lab_token("bob")).status_code == 403
    assert api.seen == []  # none of them reached the Atelier API


def test_a_browser_session_needs_the_xsrf_token_as_for_jupyterlabs_own_api(lab):
    url, api = lab
    api.answer(*SAVE, (202, operation()))
    browser = requests.Session()
    browser.get(url + "login?token=lab-token")  # signs in: a session cookie and _xsrf
    forged = browser.post(url + "atelier/images", json={"name": "x"})
    assert forged.status_code == 403 and api.seen == []
    xsrf = browser.cookies["_xsrf"]
    saved = browser.post(url + "atelier/images", json={"name": "x"}, headers={"X-XSRFToken": xsrf})
    assert saved.status_code == 202 and len(api.seen) == 1


def test_the_extension_answers_502_when_the_api_answers_no_json(lab):
    url, api = lab
    api.answer(*SAVE, (500, "<html>proxy error</html>"))
    broken = requests.post(url + "atelier/images", json={"name": "x"}, headers=lab_token())
    assert broken.status_code == 502 and broken.json()["error"]["code"] == "unreachable"


# the CLI ---------------------------------------------------------------------------------------
@pytest.fixture
def cli(capsys, atelier_api, monkeypatch):
    for name in (
        "ATELIER_API_URL",
        "JUPYTERHUB_API_TOKEN",
        "JUPYTERHUB_USER",
        "JUPYTERHUB_SERVER_NAME",
    ):
        monkeypatch.delenv(name, raising=False)

    def run(*argv: str) -> tuple[int, str, str]:
        code = main([*argv, "--url", atelier_api.url, "--token", "alice-token"])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_cli_images_save_prints_the_operation_and_how_to_follow_it(cli, atelier_api):
    atelier_api.answer(*SAVE, (202, operation()))
    code, out, _ = cli("images", "save", "alice/lab", "my-env", "--description", "mine")
    assert code == 0
    header, row, follow = out.splitlines()
    assert header.split() == [
        "ID",
        "KIND",
        "RESOURCE",
        "TARGET",
        "STATUS",
        "PHASE",
        "PERCENT",
        "CREATED",
        "REASON",
    ]
    assert row.split()[:7] == [
        "op1",
        "saveImage",
        "alice/lab",
        "alice/my-env",
        "running",
        "measuring",
        "0",
    ]
    assert follow == "follow it with: atelier operations show op1 --wait"
    [post] = atelier_api.seen
    assert post.body == {"name": "my-env", "description": "mine"}
    assert post.authorization == "token alice-token"


def test_cli_images_save_wait_follows_the_save_to_its_end(cli, atelier_api):
    atelier_api.answer("GET", "/services/atelier/api/v1/quotas", (200, {"user": "alice"}))
    atelier_api.answer(*SAVE, (202, operation()))
    atelier_api.answer(
        *OPERATION,
        (200, operation(phase="saving", percent=40)),
        (200, operation("succeeded", "done", 100)),
    )
    code, out, _ = cli("images", "save", "lab", "my-env", "--wait")  # the token's user's
    assert code == 0
    assert out.splitlines() == [
        "alice/lab -> alice/my-env: saving 40%",
        "saved alice/lab as image alice/my-env",
    ]


def test_cli_a_failed_or_refused_save_is_one_line(cli, atelier_api):
    atelier_api.answer(*SAVE, (202, operation()))
    atelier_api.answer(
        *OPERATION, (200, operation("failed", "saving", 5, "the save failed: disk full"))
    )
    code, _, err = cli("images", "save", "alice/lab", "my-env", "--wait")
    assert (code, err) == (
        2,
        "atelier: saving alice/lab as alice/my-env failed: the save failed: disk full\n",
    )
    atelier_api.answer(
        *SAVE,
        (409, refusal("conflict", "alice/lab is stopped; only a running one is saved", "instance")),
    )
    code, _, err = cli("images", "save", "alice/lab", "my-env")
    assert (code, err) == (
        2,
        "atelier: 409 conflict: instance: alice/lab is stopped; only a running one is saved\n",
    )


def test_cli_operations_list_and_show(cli, atelier_api):
    done = operation("succeeded", "done", 100)
    atelier_api.answer("GET", "/services/atelier/api/v1/operations", (200, {"operations": [done]}))
    atelier_api.answer(*OPERATION, (200, done))
    code, out, _ = cli("operations", "list")
    assert code == 0 and out.splitlines()[1].split()[:5] == [
        "op1",
        "saveImage",
        "alice/lab",
        "alice/my-env",
        "succeeded",
    ]
    code, out, _ = cli("operations", "show", "op1", "--json")
    assert code == 0 and json.loads(out) == done
    code, out, _ = cli("operations", "show", "op1")
    assert out == "saved alice/lab as image alice/my-env\n"


# the home page ----------------------------------------------------------------------------------
SNAPSHOT = Image(
    "alice/my-env", display_name="my env", visibility="private", owner="alice", base=BASE
)


def test_the_create_form_offers_snapshots_as_saved_images_on_their_bases_specs():
    catalog = Catalog({BASE: Image(BASE), SNAPSHOT.name: SNAPSHOT}, {"cpu.2u4g": Spec("cpu.2u4g")})
    page = options_form(catalog, Limits(), None)
    groups = re.findall(r'<optgroup label="([^"]+)">', page)
    assert groups == ["CPU", SAVED_TITLE]
    option = re.search(r'<option value="alice/my-env"\s+data-specs="([^"]*)"', page)
    assert option and option.group(1) == "cpu.2u4g"
    # a snapshot whose base is not realised here is not offered
    unbuilt = Catalog(catalog.images, catalog.specs, realised=frozenset())
    assert "alice/my-env" not in options_form(unbuilt, Limits(), None)


class Spawner:
    def __init__(self, name: str, ready: bool):
        self.name, self.ready, self.pending = name, ready, None
        self.orm_spawner = type("Orm", (), {"user_options": {"image": BASE}, "started": None})


class Store:
    def instance_records(self, owner):
        return {}

    def running_operations(self):
        return {"alice/lab": operation(phase="saving", percent=40), "bob/lab": operation()}

    def operations(self, owner):
        failed = operation("failed", "saving", 5, "disk full", resource="alice/old")
        older = operation("succeeded", "done", 100, resource="alice/old")
        return [operation(), failed, older]

    def volume_size(self, owner, name):
        return None


def test_a_running_save_shows_on_its_row_and_the_last_ended_one_on_others():
    user = type("User", (), {"name": "alice"})()
    user.all_spawners = lambda include_default: [Spawner("lab", True), Spawner("old", True)]
    user.server_url = lambda name: f"/user/alice/{name}/"
    backend = type("Backend", (), {"volume_used_bytes": lambda self, owner, name: None})()
    context = type("Context", (), {"store": Store(), "backend": backend})()
    lab, old = instance_rows(user, {BASE: Image(BASE)}, context)
    assert (lab.saving["phase"], lab.saving["percent"]) == ("saving", 40)
    assert old.saving is None and old.last_save["reason"] == "disk full"  # the newest that ended


# the OpenAPI document ---------------------------------------------------------------------------
def route_samples(pattern: str) -> list[str]:
    """Paths a route's pattern matches: each word of an alternative (start|stop), and a
    snapshot's name with its owner as well as a catalog name without."""
    samples = [pattern]
    alternative = re.search(r"\((\w+(?:\|\w+)+)\)", pattern)
    if alternative:
        samples = [
            pattern.replace(alternative.group(0), w) for w in alternative.group(1).split("|")
        ]
    optional = "([^/]+(?:/[^/]+)?)"
    samples = [s.replace(optional, name) for s in samples for name in ("x", "x/x")]
    return sorted({re.sub(r"\(\[\^/\]\+\)", "x", sample) for sample in samples})


def undocumented_routes(openapi: dict) -> list:
    """Each route of the API whose methods the document does not state exactly."""
    paths, wrong = openapi["paths"], []
    for pattern, handler in all_routes():
        methods = {m for m in ("get", "post", "patch", "delete", "put") if m in vars(handler)}
        for sample in route_samples(pattern):
            spec_path = next(
                (p for p in paths if re.fullmatch(re.sub(r"\{\w+\}", "[^/]+", p), sample)), None
            )
            if spec_path is None or set(paths[spec_path]) != methods:
                wrong.append((sample, sorted(methods), spec_path))
    return wrong


def test_every_route_is_documented_with_its_methods():
    assert undocumented_routes(document()) == []


def test_the_document_describes_saves_and_their_operations():
    from atelier.hub.store.records import OperationRecord

    openapi = document(Limits(snapshot_size_gb=12))
    schemas = openapi["components"]["schemas"]
    record = OperationRecord(id="x", kind="saveImage", owner="a", resource="a/b", target="a/c")
    record.status, record.phase, record.done_bytes, record.total_bytes = "running", "saving", 1, 2
    from datetime import UTC, datetime

    record.created = record.updated = datetime.now(UTC)
    assert set(schemas["Operation"]["properties"]) == set(record.to_json())
    assert schemas["Instance"]["properties"]["saving"]["oneOf"][1] == {
        "$ref": "#/components/schemas/Operation"
    }
    save = openapi["paths"]["/instances/{owner}/{name}/images"]["post"]
    assert "202" in save["responses"] and "`limits.snapshot_size_gb` (12 GB)" in save["summary"]
    assert "custom:atelier:images:save" in save["description"]
    assert set(openapi["paths"]["/images/{owner}/{name}"]) == {"get", "patch", "delete"}
