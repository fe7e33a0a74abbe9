"""Instances end to end: a real hub, proxy and JupyterLab servers on loopback."""

import os
import stat
from pathlib import Path

import pytest
import requests
from conftest import BASE, FAKE_GPU, TORCH, environ_of, pid_of

pytestmark = pytest.mark.e2e
REMOVE = {"remove": True, "confirm": "delete-volume"}  # deleting an instance deletes its volume
CPU_OPTIONS = {"image": BASE, "spec": "cpu.2u4g", "tags": {"team": "vision"}, "autostop_hours": 8}


def test_sign_in_line_and_admin_password_file(hub):
    assert hub.url in hub.sign_in_line and "admin" in hub.sign_in_line
    password_file = hub.dir / "data" / "admin-password"
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600
    assert len(hub.admin_password) >= 12


def test_torch_image_runs_torch(envs_dir):
    import subprocess

    python = envs_dir / TORCH / "bin" / "python"
    result = subprocess.run(
        [python, "-c", "import torch, ipywidgets, jupyterlab; print(torch.ones(2).sum().item())"],
        capture_output=True,
        text=True,
    )
    assert result.stdout.strip() == "2.0", result.stderr


@pytest.mark.parametrize("image", [BASE, TORCH, "the hub's own"])
def test_servers_start_without_compiling_an_unused_iri_grammar(envs_dir, image):
    """jsonschema's optional IRI checker (rfc3987-syntax) costs every JupyterLab server and
    hub 1-2 s of CPU at start for a format no Jupyter schema uses: it is left out."""
    import subprocess
    import sys

    python = sys.executable if image == "the hub's own" else envs_dir / image / "bin" / "python"
    imports = "jupyterhub.app" if image == "the hub's own" else "jupyter_server.serverapp"
    code = f"import sys, {imports}; print(sorted(m for m in sys.modules if 'rfc3987' in m))"
    result = subprocess.run([python, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "[]", (result.stdout, result.stderr[-2000:])


def test_instance_limit_and_changes_of_a_defined_instance(hub):
    token = hub.add_user("carol")
    for n in range(4):
        response = hub.api(
            "PUT", f"/users/carol/servers/n{n}", token, json={"user_options": CPU_OPTIONS}
        )
        assert response.status_code == 201, response.text
    fifth = hub.api("PUT", "/users/carol/servers/n4", token, json={"user_options": CPU_OPTIONS})
    assert fifth.status_code == 400
    limit = "name: at most 4 instances per user (limits.instances_per_user); delete one first"
    assert fifth.json()["message"] == limit
    fifth = hub.api("POST", "/users/carol/servers/n4", token, json=CPU_OPTIONS)
    assert (fifth.status_code, fifth.json()["message"]) == (400, limit)
    assert sorted(hub.servers("carol")) == ["n0", "n1", "n2", "n3"]

    # a stopped instance may change image and spec; a bad change is refused and changes nothing
    changed = {**CPU_OPTIONS, "image": TORCH, "spec": "cpu.2u8g"}
    assert (
        hub.api(
            "PATCH", "/users/carol/servers/n0", token, json={"user_options": changed}
        ).status_code
        == 200
    )
    assert hub.servers("carol")["n0"]["user_options"] == changed
    bad = {**changed, "spec": "gpu.1xa100.8u64g"}
    response = hub.api("PATCH", "/users/carol/servers/n0", token, json={"user_options": bad})
    assert response.status_code == 400 and "spec:" in response.json()["message"]
    assert hub.servers("carol")["n0"]["user_options"] == changed
    response = hub.api("PATCH", "/users/carol/servers/n0", token, json={"name": "Not OK"})
    assert response.status_code == 400 and "name:" in response.json()["message"]

    # a defined instance that never started had no volume: deleting it deletes none
    deleted = hub.api("DELETE", "/users/carol/servers/n3", token, json=REMOVE)
    assert deleted.status_code == 204, deleted.text
    audit = hub.atelier("GET", "/audit?resource=carol/n3").json()["events"]
    assert [e["action"] for e in audit if e["resource_type"] == "volume"] == []


def test_users_cannot_touch_each_others_instances(hub):
    dave, erin = hub.add_user("dave"), hub.add_user("erin")
    assert (
        hub.api(
            "PUT", "/users/dave/servers/mine", dave, json={"user_options": CPU_OPTIONS}
        ).status_code
        == 201
    )
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        response = hub.api(
            method, "/users/dave/servers/mine", erin, json={"user_options": CPU_OPTIONS}
        )
        assert response.status_code in (403, 404), (method, response.status_code)
    assert hub.api("GET", "/users/dave", erin).status_code in (403, 404)
    assert list(hub.servers("dave")) == ["mine"]
    assert hub.servers("dave")["mine"]["user_options"] == CPU_OPTIONS


def test_devices_are_exclusive_released_and_refused_when_exhausted(hub):
    token = hub.add_user("gpu-user")
    one = {"image": FAKE_GPU, "spec": "gpu.1xa100.8u64g"}

    def start(name, options=one):
        return hub.api("POST", f"/users/gpu-user/servers/{name}", token, json=options)

    def visible(name):
        hub.wait_for(lambda: hub.servers("gpu-user")[name]["ready"], what=f"{name} ready")
        return environ_of(pid_of(hub, "gpu-user", name))["CUDA_VISIBLE_DEVICES"]

    assert start("g1").status_code in (201, 202)
    assert start("g2").status_code in (201, 202)
    assert {visible("g1"), visible("g2")} == {"0", "1"}
    refused = start("g3")
    assert refused.status_code == 400
    assert refused.json()["message"] == (
        "spec gpu.1xa100.8u64g needs 1 A100 GPUs; 0 are free. "
        "Stop another instance or choose a smaller spec."
    )
    assert "g3" not in hub.servers("gpu-user")
    two = start("g4", {"image": FAKE_GPU, "spec": "gpu.2xa100.16u128g"})
    assert two.status_code == 400 and "needs 2 A100 GPUs; 0 are free" in two.json()["message"]

    released = visible("g1")
    hub.api("DELETE", "/users/gpu-user/servers/g1", token)
    hub.wait_for(lambda: not hub.servers("gpu-user")["g1"]["ready"], what="g1 stopped")
    assert start("g3").status_code in (201, 202)
    assert visible("g3") == released
    for name in ("g2", "g3"):
        hub.api(
            "DELETE",
            f"/users/gpu-user/servers/{name}",
            token,
            json=REMOVE,
        )


def test_catalog_changes_take_effect_without_restart(hub):
    token = hub.add_user("frank")
    hub.cli("images", "disable", TORCH)
    try:
        response = hub.api(
            "POST", "/users/frank/servers/t", token, json={"image": TORCH, "spec": "cpu.2u4g"}
        )
        assert response.status_code == 400
        assert f"image {TORCH} is disabled" in response.json()["message"]
    finally:
        hub.cli("images", "update", TORCH, "--status", "active")
    response = hub.api(
        "PUT",
        "/users/frank/servers/t",
        token,
        json={"user_options": {"image": TORCH, "spec": "cpu.2u4g"}},
    )
    assert response.status_code == 201


def test_progress_says_what_is_happening(hub):
    import json
    import threading

    token = hub.add_user("pat")
    spawn = threading.Thread(
        target=hub.api, args=("POST", "/users/pat/servers/p", token), kwargs={"json": CPU_OPTIONS}
    )
    spawn.start()
    hub.wait_for(lambda: hub.servers("pat").get("p", {}).get("pending") == "spawn", what="pending")
    stream = requests.get(
        f"{hub.url}/hub/api/users/pat/servers/p/progress",
        headers={"Authorization": f"token {token}"},
        stream=True,
        timeout=60,
    )
    events = [
        json.loads(line[5:])
        for line in stream.iter_lines(decode_unicode=True)
        if line.startswith("data:")
    ]
    spawn.join()
    messages = [event["message"] for event in events]
    assert "Allocating devices for cpu.2u4g" in messages
    assert f"Starting JupyterLab on {BASE}" in messages
    assert events[-1]["ready"] is True
    hub.api("DELETE", "/users/pat/servers/p", token, json=REMOVE)


def test_interrupting_the_hub_stops_the_proxy_and_keeps_instances(envs_dir):
    import signal

    from conftest import Hub

    hub = Hub(envs_dir)
    token = hub.add_user("quinn")
    instance = hub.start("quinn", "q", token, CPU_OPTIONS)
    proxy = int((hub.dir / "data" / "proxy.pid").read_text())
    hub.process.send_signal(signal.SIGINT)  # what Ctrl-C in `make run` sends
    hub.process.wait(60)
    hub.wait_for(lambda: not Path(f"/proc/{proxy}").exists(), timeout=20, what="the proxy gone")
    assert Path(f"/proc/{instance}").exists()  # instances outlive the hub
    hub.log.close()
    hub.launch()
    hub.wait_for(hub.sign_in, 60, "the hub to start again")
    assert hub.servers("quinn")["q"]["ready"] and pid_of(hub, "quinn", "q") == instance
    hub.stop()
    hub.wait_for(lambda: not Path(f"/proc/{instance}").exists(), timeout=20, what="q stopped")


def test_running_instance_changes_tags_in_place_and_restarts_for_a_new_spec(hub):
    token = hub.add_user("rita")
    first = hub.start("rita", "r", token, CPU_OPTIONS)

    retagged = {**CPU_OPTIONS, "tags": {"team": "nlp"}}
    assert (
        hub.api(
            "PATCH", "/users/rita/servers/r", token, json={"user_options": retagged}
        ).status_code
        == 200
    )
    assert (
        pid_of(hub, "rita", "r") == first and hub.servers("rita")["r"]["user_options"] == retagged
    )

    image = hub.api(
        "PATCH", "/users/rita/servers/r", token, json={"user_options": {**retagged, "image": TORCH}}
    )
    assert image.status_code == 400
    assert (
        image.json()["message"]
        == "image: can change only while the instance is stopped, it is running"
    )

    # the README's PATCH names image, spec and tags: auto-stop stays, and the answer shows
    # the instance restarted on the new spec with the new tags
    readme = {"image": BASE, "spec": "cpu.2u8g", "tags": {}}
    response = hub.api("PATCH", "/users/rita/servers/r", token, json={"user_options": readme})
    assert response.status_code == 200, response.text
    bigger = {**CPU_OPTIONS, **readme}
    assert (response.json()["user_options"], response.json()["ready"]) == (bigger, True)
    second = pid_of(hub, "rita", "r")
    assert second != first and not Path(f"/proc/{first}").exists()
    assert environ_of(second)["MEM_LIMIT"] == str(8 * 1024**3)
    assert hub.servers("rita")["r"]["user_options"] == bigger
    only_tags = {"tags": {"team": "cv"}}
    response = hub.api("PATCH", "/users/rita/servers/r", token, json={"user_options": only_tags})
    assert response.json()["user_options"] == {**bigger, **only_tags}
    assert pid_of(hub, "rita", "r") == second
    hub.api("DELETE", "/users/rita/servers/r", token, json=REMOVE)


def test_a_deprecated_image_runs_its_instances_but_no_new_one(hub, envs_dir):
    old = "old_1.0-cpu-py_3.11-debian_12-x86_64"
    if not (envs_dir / old).exists():
        (envs_dir / old).symlink_to(envs_dir / BASE)
    assert hub.atelier("POST", "/images", json={"name": old}).status_code == 201
    token = hub.add_user("dora")
    hub.start("dora", "kept", token, {"image": old, "spec": "cpu.2u4g"})
    hub.api("DELETE", "/users/dora/servers/kept", token)
    hub.wait_for(lambda: not hub.servers("dora")["kept"]["ready"], what="kept stopped")
    hub.cli("images", "update", old, "--status", "deprecated", "--successor", BASE)

    message = f"image: image {old} is deprecated; use {BASE}"
    options = {"image": old, "spec": "cpu.2u4g"}
    created = hub.api("POST", "/users/dora/servers/new", token, json=options)
    assert (created.status_code, created.json()["message"]) == (400, message)
    defined = hub.api("PUT", "/users/dora/servers/new", token, json={"user_options": options})
    assert (defined.status_code, defined.json()["message"]) == (400, message)
    body = {"name": "new", **options}
    error = hub.atelier("POST", "/instances", token, json=body).json()["error"]
    assert (error["field"], error["message"]) == ("image", message.removeprefix("image: "))
    assert "new" not in hub.servers("dora")

    hub.start("dora", "kept", token)  # an instance already on it starts again
    assert hub.servers("dora")["kept"]["user_options"]["image"] == old


def test_the_readme_delete_examples_delete_and_a_missing_confirmation_says_how(hub):
    """The README's delete commands, run as written (alice's instances exp-1 and exp-3)."""
    import re
    import subprocess

    token = hub.add_user("alice")
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    hub_delete = re.search(
        r"^curl .*-X DELETE \$HUB/users/alice/servers/exp-1 -d .*$", readme, re.M
    )
    api_delete = re.search(r'^curl .*-X DELETE "?\$API/instances/alice/exp-3\S*', readme, re.M)
    environment = {
        **os.environ,
        "AUTH": f"Authorization: token {token}",
        "HUB": f"{hub.url}/hub/api",
        "API": f"{hub.url}/services/atelier/api/v1",
    }
    for name, command in (("exp-1", hub_delete[0]), ("exp-3", api_delete[0])):
        define = {"user_options": {"image": BASE, "spec": "cpu.2u4g"}}
        assert hub.api("PUT", f"/users/alice/servers/{name}", token, json=define).ok
        status = subprocess.run(
            ["bash", "-c", f"{command} -s -o /dev/null -w '%{{http_code}}'"],
            env=environment,
            capture_output=True,
            text=True,
        ).stdout
        assert status in ("202", "204"), (command, status)
        assert name not in hub.servers("alice")

    assert hub.api("PUT", "/users/alice/servers/exp-1", token, json=define).ok
    refused = hub.api("DELETE", "/users/alice/servers/exp-1", token, json={"remove": True})
    assert refused.status_code == 400
    assert refused.json()["message"].endswith(
        'send {"remove": true, "confirm": "delete-volume"} to go ahead'
    )
    # the service sees a change made through the hub's API within about a second
    hub.wait_for(lambda: hub.atelier("GET", "/instances/alice/exp-1", token).ok, 10, "exp-1")
    refused = hub.atelier("DELETE", "/instances/alice/exp-1", token).json()["error"]
    assert refused["message"].endswith("add ?confirm=delete-volume to go ahead")
    assert "exp-1" in hub.servers("alice")
