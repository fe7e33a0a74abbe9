"""Deployments from the SDK and `atelier deployments ...`, against the small stand-in of the
Atelier API on loopback (as the jobs' CLI tests): what each call sends, what it answers or
prints, waiting for a version, and asking the model through the hub's address."""

from __future__ import annotations

import json

import pytest
from standin import API, FakeAtelier, refusal, serve

from atelier.hub.cli.main import main
from atelier.sdk import AtelierError, Client

TORCH = "pytorch_2.13.0-cpu-py_3.11-debian_12-x86_64"
LINE = "/deployments/alice/line"
INFER = LINE + "/v2/models/line/infer"  # on the hub's address, not under the API
KEY = "ak_0123456789ab." + "k" * 43
EVENTS = [{"time": "2026-01-01T00:00:00+00:00", "message": "version 1 created"}]


def deployment(status="deploying", version=1, serving=None, owner="alice", **more) -> dict:
    """A deployment as the API shows it."""
    return {
        "id": "d1", "owner": owner, "name": "line", "status": status, "reason": None,
        "version": version, "serving_version": serving, "image": TORCH, "spec": "cpu.2u8g",
        "volume": "lab", "model": "jobs/fit", "replicas": 2, "timeout_seconds": 60,
        "environment": {}, "versions": [{"version": v} for v in range(1, version + 1)],
        "created": "2026-01-01T00:00:00+00:00", "url": f"/deployments/{owner}/line",
        "replicas_now": [], "metrics": {"requests": 0, "errors": 0,
                                        "latency_ms": {"p50": None, "p99": None}},
        **more,
    }  # fmt: skip


class DeploymentsAtelier(FakeAtelier):
    def sent(self) -> list[tuple[str, str, object]]:
        """What was asked, but who the token is (GET /quotas)."""
        return [
            (s.method, s.path.removeprefix(API), s.body)
            for s in self.seen
            if s.path != API + "/quotas"
        ]

    def answer_on_hub(self, method: str, path: str, *replies) -> None:
        self.answers[(method, path)] = list(replies)


@pytest.fixture(scope="module")
def stand_in():
    fake = DeploymentsAtelier(prefix=API)
    server = serve(fake)
    yield fake
    server.shutdown()
    server.server_close()


@pytest.fixture
def api(stand_in, monkeypatch):
    for name in ("ATELIER_API_URL", "ATELIER_HUB_URL", "ATELIER_INSTANCE", "JUPYTERHUB_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name in ("JUPYTERHUB_USER", "JUPYTERHUB_SERVICE_PREFIX", "JUPYTERHUB_PUBLIC_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("time.sleep", lambda seconds: None)
    stand_in.answers.clear()
    stand_in.seen.clear()
    stand_in.answer("GET", "/quotas", (200, {"user": "alice"}))  # who the token is
    return stand_in


@pytest.fixture
def client(api):
    return Client(api.url, "alice-token")


@pytest.fixture
def cli(capsys, api):
    def run(*argv: str) -> tuple[int, str, str]:
        code = main(["deployments", *argv, "--url", api.url, "--token", "alice-token"])
        out, err = capsys.readouterr()
        return code, out, err

    return run


# the SDK ------------------------------------------------------------------------------------
CALLS = [
    (lambda c: c.deployments(), "GET", "/deployments", None, {"deployments": [1]}, [1]),
    (lambda c: c.deployment("line"), "GET", LINE, None, {"id": "d1"}, {"id": "d1"}),
    (lambda c: c.update_deployment("line", replicas=3), "PATCH", LINE, {"replicas": 3}, {}, {}),
    (lambda c: c.rollback_deployment("line"), "POST", LINE + "/rollback", None, {}, {}),
    (lambda c: c.stop_deployment("line", "bob"), "POST", "/deployments/bob/line/stop", None,
     {}, {}),
    (lambda c: c.start_deployment("line"), "POST", LINE + "/start", None, {}, {}),
    (lambda c: c.delete_deployment("line"), "DELETE", LINE, None, "", None),
    (lambda c: c.deployment_events("line"), "GET", LINE + "/events", None, {"events": EVENTS},
     EVENTS),
    (lambda c: c.create_app_key("line"), "POST", LINE + "/keys", None, {"key": KEY},
     {"key": KEY}),
    (lambda c: c.app_keys("line"), "GET", LINE + "/keys", None, {"keys": [{"prefix": "p"}]},
     [{"prefix": "p"}]),
    (lambda c: c.revoke_app_key("line", "ak_0123456789ab"), "DELETE",
     LINE + "/keys/ak_0123456789ab", None, "", None),
]  # fmt: skip


@pytest.mark.parametrize("call, method, path, body, reply, returned", CALLS)
def test_each_call_sends_its_method_path_and_body_and_returns_the_answer(
    api, client, call, method, path, body, reply, returned
):
    api.answer(method, path, (200, reply))
    assert call(client) == returned
    assert api.sent() == [(method, path, body)]


def test_create_sends_only_what_is_given_and_a_model_is_on_this_instances_volume(
    api, client, monkeypatch
):
    api.answer("POST", "/deployments", (201, deployment()))
    assert client.create_deployment("line", image=TORCH, spec="s", job="fit") == deployment()
    monkeypatch.setenv("ATELIER_INSTANCE", "lab")
    client.create_deployment(
        "line", image=TORCH, spec="s", model="m", replicas=2, environment={"A": "1"}
    )
    basics = {"name": "line", "image": TORCH, "spec": "s"}
    assert [body for _, _, body in api.sent()] == [
        {**basics, "job": "fit", "replicas": 1},
        {**basics, "model": "m", "volume": "lab", "replicas": 2, "environment": {"A": "1"}},
    ]


def test_logs_are_text_of_a_replica_and_its_tail(api, client):
    api.answer("GET", LINE + "/logs", (200, "ready\nPOST /v2 200\n"))
    assert client.deployment_logs("line", replica=2, tail=5) == "ready\nPOST /v2 200\n"
    assert api.seen[-1].query == {"replica": "2", "tail": "5"}


def test_create_wait_polls_until_it_runs(api, client):
    api.answer("POST", "/deployments", (201, deployment()))
    api.answer("GET", LINE, (200, deployment()), (200, deployment("running", serving=1)))
    made = client.create_deployment("line", image=TORCH, spec="s", job="fit", wait=True)
    assert made["status"] == "running"
    assert [method for method, _, _ in api.sent()] == ["POST", "GET", "GET"]


def test_create_wait_raises_the_reason_it_failed(api, client):
    api.answer("POST", "/deployments", (201, deployment()))
    why = "version 1 failed: replica 1 ended: no model.pt"
    api.answer("GET", LINE, (200, deployment("failed", reason=why)))
    with pytest.raises(AtelierError) as raised:
        client.create_deployment("line", image=TORCH, spec="s", job="fit", wait=True)
    assert (raised.value.code, raised.value.message) == ("failed", why)


def test_update_wait_returns_once_the_new_version_serves(api, client):
    api.answer("PATCH", LINE, (200, deployment("upgrading", 2, 1)))
    api.answer(
        "GET", LINE, (200, deployment("upgrading", 2, 1)), (200, deployment("running", 2, 2))
    )
    assert client.update_deployment("line", wait=True, model="v2")["serving_version"] == 2


def test_update_wait_raises_when_the_new_version_failed_though_the_old_one_runs(api, client):
    why = "version 2 failed, version 1 serves: replica 3 was not ready within 60 s"
    back = deployment("running", 1, 1, reason=why, versions=[{"version": 1}, {"version": 2}])
    back["versions"][1]["failed"] = "replica 3 was not ready within 60 s"
    api.answer("PATCH", LINE, (200, deployment("upgrading", 2, 1)))
    api.answer("GET", LINE, (200, back))
    with pytest.raises(AtelierError, match="version 2 failed, version 1 serves"):
        client.update_deployment("line", wait=True, image="other")


def test_predict_sends_an_oip_v2_body_with_the_app_key_to_the_hubs_address(api, client):
    answer = {"outputs": [{"name": "output-0", "shape": [2, 1], "datatype": "FP32"}]}
    api.answer_on_hub("POST", INFER, (200, answer))
    inputs = {"x": [[1.0], [2]], "ids": [[1, 2, 3]], "flag": [True], "t": 0.5}
    assert client.predict("line", inputs, key=KEY) == answer
    [seen] = api.seen[1:]  # after who the token is: the model, not the API
    assert (seen.path, seen.authorization) == (INFER, f"Bearer {KEY}")
    assert seen.body == {
        "inputs": [
            {"name": "x", "shape": [2, 1], "datatype": "FP32", "data": [1.0, 2]},
            {"name": "ids", "shape": [1, 3], "datatype": "INT64", "data": [1, 2, 3]},
            {"name": "flag", "shape": [1], "datatype": "BOOL", "data": [True]},
            {"name": "t", "shape": [1], "datatype": "FP32", "data": [0.5]},
        ]
    }
    tensor = {"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}
    client.predict("line", [tensor], key=KEY, owner="alice")
    assert api.seen[-1].body == {"inputs": [tensor]}  # already OIP-shaped: sent as it is


@pytest.mark.parametrize("value", [[[1.0], [2.0, 3.0]], ["a"], [[1], 2]])
def test_predict_refuses_what_is_no_tensor_before_sending_it(api, client, value):
    with pytest.raises(AtelierError) as raised:
        client.predict("line", {"x": value}, key=KEY, owner="alice")
    assert raised.value.field == "x" and api.seen == []


@pytest.mark.parametrize(
    "status, body, code, message",
    [
        (401, {"error": {"code": 401, "message": "a valid app key is needed"}}, "unauthorized",
         "a valid app key is needed"),
        (400, {"error": "input x: shape [2] does not match"}, "bad_request",
         "input x: shape [2] does not match"),
    ],
)  # fmt: skip
def test_a_refused_prediction_raises_the_routers_or_the_models_reason(
    api, client, status, body, code, message
):
    api.answer_on_hub("POST", INFER, (status, body))
    with pytest.raises(AtelierError) as raised:
        client.predict("line", {"x": [1.0]}, key=KEY, owner="alice")
    assert (raised.value.status, raised.value.code, raised.value.message) == (status, code, message)


def test_the_hubs_address_inside_an_instance(api, monkeypatch):
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", "/user/alice/lab/")
    monkeypatch.setenv("ATELIER_API_URL", api.url)  # the service's own: not the proxy's
    inside = Client(None, "t")
    with pytest.raises(AtelierError, match="ATELIER_HUB_URL"):
        inside.hub_address()
    monkeypatch.setenv("JUPYTERHUB_PUBLIC_URL", "https://hub.example.org/user/alice/lab/")
    assert inside.hub_address() == "https://hub.example.org"
    monkeypatch.setenv("ATELIER_HUB_URL", "http://127.0.0.1:8000/")
    assert inside.hub_address() == "http://127.0.0.1:8000"
    assert inside.hub_address("https://other.org") == "https://other.org"
    outside = Client("https://hub.example.org" + API, "t")  # the public API: the hub's is its
    assert outside.hub_address() == "https://hub.example.org"


# the CLI ------------------------------------------------------------------------------------
CREATE = ("create", "line", "--image", TORCH, "--spec", "cpu.2u8g", "--job", "fit")


def test_create_sends_every_option_given_and_prints_the_status_line(cli, api):
    api.answer("POST", "/deployments", (201, deployment()))
    code, out, err = cli(*CREATE, "--replicas", "2", "--timeout-seconds", "30", "--env", "A=1")
    assert (code, out, err) == (
        0,
        "deployment alice/line is deploying (version 1, none serving)\n",
        "",
    )
    body = {"name": "line", "image": TORCH, "spec": "cpu.2u8g", "job": "fit", "replicas": 2}
    body |= {"timeout_seconds": 30, "environment": {"A": "1"}}
    assert api.sent() == [("POST", "/deployments", body)]


def test_create_wait_prints_how_it_ended_and_exits_2_naming_why_it_failed(cli, api):
    api.answer("POST", "/deployments", (201, deployment()))
    api.answer("GET", LINE, (200, deployment()), (200, deployment("running", serving=1)))
    assert cli(*CREATE, "--wait")[1].splitlines() == [
        "deployment alice/line is deploying (version 1, none serving)",
        "deployment alice/line is running (version 1)",
    ]
    why = "version 1 failed: replica 1 ended: no model.pt"
    api.answer("GET", LINE, (200, deployment("failed", reason=why)))
    code, _, err = cli(*CREATE, "--wait")
    assert (code, err) == (2, f"atelier: deployment alice/line failed: {why}\n")


@pytest.mark.parametrize(
    "argv, message",
    [
        (("--image", TORCH, "--spec", "s"), "needs --model PATH (and --volume) or --job"),
        (("--image", TORCH, "--spec", "s", "--job", "f", "--model", "m"), "do not go together"),
        (("--spec", "s", "--job", "f"), "needs --image and --spec"),
        (("--image", TORCH, "--spec", "s", "--job", "f", "--env", "A"), "'A' is not key=value"),
    ],
)
def test_a_malformed_create_is_refused_in_one_line_before_any_request(cli, api, argv, message):
    code, out, err = cli("create", "line", *argv)
    assert (code, out) == (2, "") and message in err and err.count("\n") == 1
    assert api.seen == []


def test_a_refusal_of_the_api_is_one_line_and_exit_2(cli, api):
    taken = refusal("exists", "you have a deployment named line already", "name")
    api.answer("POST", "/deployments", (409, taken))
    message = "atelier: 409 exists: name: you have a deployment named line already\n"
    assert cli(*CREATE) == (2, "", message)
    api.answer("GET", LINE, (404, refusal("not_found", "no deployment alice/line")))
    assert cli("show", "line") == (2, "", "atelier: 404 not_found: no deployment alice/line\n")


def test_list_and_show(cli, api):
    api.answer("GET", "/deployments", (200, {"deployments": [deployment("running", 2, 2)]}))
    header, row = [line.split() for line in cli("list")[1].splitlines()]
    assert header == ["NAME", "STATUS", "VERSION", "SERVING", "REPLICAS", "URL", "CREATED"]
    assert row[:6] == ["line", "running", "2", "2", "2", LINE]
    metrics = {"requests": 9, "errors": 1, "latency_ms": {"p50": 2.5, "p99": 9.25}}
    shown = deployment("upgrading", 3, 2, metrics=metrics)
    api.answer("GET", LINE, (200, shown))
    api.answer("GET", LINE + "/events", (200, {"events": EVENTS}))
    out = cli("show", "line")[1].splitlines()
    assert out[0] == "deployment alice/line is upgrading (version 3, version 2 serving)"
    assert f"  url:         {api.url.removesuffix(API)}{LINE}" in out  # on the hub's address
    assert "  requests:    9 (1 errors)" in out and "  latency:     p50 2.5 ms, p99 9.2 ms" in out
    assert out[-1].endswith("version 1 created")


def test_calls_that_answer_the_deployment_and_delete(cli, api):
    api.answer("POST", LINE + "/stop", (202, deployment("stopped", 1, None)))
    api.answer("POST", LINE + "/rollback", (202, deployment("upgrading", 3, 2)))
    api.answer("DELETE", LINE, (204, ""))
    assert cli("stop", "line")[1] == "deployment alice/line is stopped (version 1, none serving)\n"
    assert cli("rollback", "line")[1].startswith("deployment alice/line is upgrading (version 3")
    assert cli("delete", "line")[1].startswith("deleted deployment line")
    api.answer("GET", LINE + "/logs", (200, "ready\n"))
    assert cli("logs", "line", "--tail", "1") == (0, "ready\n", "")


def test_keys_are_made_listed_and_revoked(cli, api):
    made = {"prefix": "ak_0123456789ab", "created": "2026-01-01T00:00:00+00:00", "key": KEY}
    api.answer("POST", LINE + "/keys", (201, made))
    note = "app key ak_0123456789ab: shown this once, keep it\n"  # the key alone on stdout
    assert cli("create-key", "line") == (0, KEY + "\n", note)
    api.answer("GET", LINE + "/keys", (200, {"keys": [{"prefix": made["prefix"], "created": "c"}]}))
    assert cli("keys", "line")[1].splitlines()[1].split() == ["ak_0123456789ab", "c"]
    api.answer("DELETE", LINE + "/keys/ak_0123456789ab", (204, ""))
    assert cli("revoke-key", "line", "ak_0123456789ab")[1] == (
        "revoked app key ak_0123456789ab of deployment line\n"
    )


def test_predict_from_inputs_or_a_body_file_prints_the_answer(cli, api, tmp_path):
    output = {"name": "output-0", "shape": [2, 1], "datatype": "FP32", "data": [5.0, 8.0]}
    answer = {"outputs": [output]}
    api.answer_on_hub("POST", INFER, (200, answer))
    code, out, _ = cli("predict", "line", "--key", KEY, "--input", "x=[[1.0],[2.0]]")
    assert code == 0 and json.loads(out) == answer
    assert api.seen[-1].body["inputs"] == [
        {"name": "x", "shape": [2, 1], "datatype": "FP32", "data": [1.0, 2.0]}
    ]
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1.0]}], "id": "7"}
    (tmp_path / "body.json").write_text(json.dumps(body))
    assert cli("predict", "line", "--key", KEY, "--body", str(tmp_path / "body.json"))[0] == 0
    assert api.seen[-1].body == body
    bad = cli("predict", "line", "--key", KEY, "--input", "x=[1,")
    assert bad[0] == 2 and bad[2].startswith("atelier: --input: not JSON")


def test_predict_needs_only_the_app_key_when_the_owner_is_named(capsys, api):
    api.answer_on_hub("POST", "/deployments/bob/line/v2/models/line/infer", (200, {"outputs": []}))
    argv = ["deployments", "predict", "line", "--owner", "bob", "--key", KEY, "--url", api.url]
    assert main([*argv, "--input", "x=[1]"]) == 0
    assert [s.path for s in api.seen] == ["/deployments/bob/line/v2/models/line/infer"]
    unknown = {"error": {"code": 401, "message": "a valid app key is needed"}}
    api.answer_on_hub("POST", "/deployments/bob/line/v2/models/line/infer", (401, unknown))
    assert main([*argv, "--input", "x=[1]"]) == 2
    assert capsys.readouterr().err == "atelier: 401 unauthorized: a valid app key is needed\n"
