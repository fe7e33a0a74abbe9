"""The admin's `atelier images|specs|token` commands against a real store."""

import fcntl
import json
import os
import pwd
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml
from conftest import free_port

from atelier.hub.cli.main import buildable_images, main
from atelier.hub.settings import DEFAULT_CONFIG, PROJECT_ROOT, load_settings
from atelier.hub.store.store import Store
from atelier.spawner.local.envs import STAMP, built_envs

BASE = "python_3.11-cpu-py_3.11-debian_12-x86_64"
TORCH = "pytorch_2.13.0-cpu-py_3.11-debian_12-x86_64"
CUDA = "pytorch_2.4.0-cuda_12.4-py_3.11-ubuntu_22.04-x86_64"


@pytest.fixture
def atelier(tmp_path, capsys):
    def run(*argv):
        code = main(
            [*argv[:1], "--data-dir", str(tmp_path), *argv[1:]]
            if argv[0] != "--config"
            else list(argv)
        )
        out, err = capsys.readouterr()
        return code, out, err

    return run


def listing(atelier, noun):
    code, out, _ = atelier(noun, "list", "--json")
    assert code == 0
    return {row["name"]: row for row in json.loads(out)}


def test_catalog_is_seeded_from_the_configuration(atelier):
    images = listing(atelier, "images")
    assert images[TORCH]["flavor"] == "cpu" and images[TORCH]["engine"] == "pytorch"
    assert images[TORCH]["engine_version"] == "2.13.0"
    assert {row["flavor"] for row in images.values()} == {"cpu", "gpu", "ascend"}
    specs = listing(atelier, "specs")
    gpu = specs["gpu.2xa100.16u128g"]
    assert (gpu["accelerator_type"], gpu["accelerator_count"], gpu["cpu"]) == ("a100", 2, 16)


def test_table_output(atelier):
    code, out, _ = atelier("images", "list")
    assert code == 0
    assert out.splitlines()[0].split()[:5] == [
        "NAME",
        "FLAVOR",
        "ENGINE",
        "ENGINE_VERSION",
        "STATUS",
    ]
    assert any(line.startswith(TORCH) for line in out.splitlines())


@pytest.fixture
def without_cuda(tmp_path, capsys):
    """The CLI on a catalog that lacks the CUDA image, whose definition is in images/."""
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    images = [image for image in config["images"] if image["name"] != CUDA]
    path = config_file(tmp_path, images=images)

    def run(*argv):
        code = main(["--config", path, *argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_add_update_deprecate_disable_delete_an_image(without_cuda):
    atelier = without_cuda
    assert atelier("images", "add", CUDA, "--display-name", "CUDA")[0] == 0
    assert listing(atelier, "images")[CUDA]["display_name"] == "CUDA"
    code, out, _ = atelier("images", "update", BASE, "--status", "deprecated", "--successor", CUDA)
    assert code == 0 and "deprecated" in out
    assert listing(atelier, "images")[BASE]["successor"] == CUDA
    assert atelier("images", "disable", CUDA)[0] == 0
    assert listing(atelier, "images")[CUDA]["status"] == "disabled"
    assert atelier("images", "delete", CUDA)[0] == 0
    assert CUDA not in listing(atelier, "images")


def test_an_empty_successor_clears_it(atelier):
    assert atelier("images", "update", BASE, "--status", "deprecated", "--successor", TORCH)[0] == 0
    code, _, err = atelier("images", "update", BASE, "--status", "active", "--successor", "")
    assert (code, err) == (0, "")
    assert listing(atelier, "images")[BASE]["successor"] is None


def test_an_image_without_a_definition_is_refused_and_the_refusal_audited(atelier, tmp_path):
    name = "tensorflow_2.16.1-cpu-py_3.11-debian_12-x86_64"
    before = listing(atelier, "images")
    code, _, err = atelier("images", "add", name)
    assert code == 2 and len(err.splitlines()) == 1
    assert f"images/{name}/requirements.txt" in err
    assert listing(atelier, "images") == before
    [event] = audit_events(tmp_path, "createImage")
    assert (event["resource"], event["result"]) == (name, "failure")
    assert "no definition" in event["reason"]


def test_building_an_image_without_a_definition_is_refused_before_any_work(tmp_path, atelier):
    envs = tmp_path / "envs"
    path = config_file(tmp_path, envs_dir=str(envs))
    name = "tensorflow_2.16.1-cpu-py_3.11-debian_12-x86_64"
    code, out, err = atelier("--config", path, "images", "build", BASE, name)
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert f"images/{name}/requirements.txt" in err
    assert not envs.exists()


def audit_events(data_dir, action: str) -> list[dict]:
    return Store(f"sqlite:///{data_dir / 'atelier.sqlite'}").audit(action=action)[1]


def test_catalog_changes_are_audited_as_the_api_audits_them(without_cuda, tmp_path):
    """The same actions as the API's, by the account running the CLI."""
    atelier = without_cuda
    for argv in (
        ("images", "add", CUDA),
        ("images", "update", CUDA, "--display-name", "GPU"),
        ("images", "disable", CUDA),
        ("images", "delete", CUDA),
        ("specs", "add", "cpu.4u16g"),
        ("specs", "update", "cpu.4u16g", "--display-name", "big"),
        ("specs", "disable", "cpu.4u16g"),
        ("specs", "enable", "cpu.4u16g"),
        ("specs", "delete", "cpu.4u16g"),
    ):
        assert atelier(*argv)[0] == 0, argv
    assert atelier("specs", "delete", "cpu.4u16g")[0] == 2  # refused: audited too
    actor = f"cli:{pwd.getpwuid(os.geteuid()).pw_name}"
    for action, kind, name, results in (
        ("createImage", "image", CUDA, ["success"]),
        ("updateImage", "image", CUDA, ["success", "success"]),
        ("deleteImage", "image", CUDA, ["success"]),
        ("createSpec", "spec", "cpu.4u16g", ["success"]),
        ("updateSpec", "spec", "cpu.4u16g", ["success"] * 3),
        ("deleteSpec", "spec", "cpu.4u16g", ["failure", "success"]),
    ):
        events = audit_events(tmp_path / "data", action)
        assert [e["result"] for e in events] == results, action
        assert {(e["actor"], e["resource_type"], e["resource"]) for e in events} == {
            (actor, kind, name)
        }


@pytest.mark.parametrize(
    "argv, message",
    [
        (("images", "add", "tensorflow-latest"), "name: 'tensorflow-latest' does not follow"),
        (("images", "add", TORCH), f"name: image {TORCH} already exists"),
        (
            ("images", "update", "nope_1-cpu-py_3.11-debian_12-x86_64", "--display-name", "x"),
            "no image named",
        ),
        (("images", "update", BASE, "--successor", BASE), "successor: 'python_3.11"),
        (
            ("images", "update", BASE, "--successor", "missing"),
            "is not another image in the catalog",
        ),
        (("specs", "add", "gpu.a100"), "name: 'gpu.a100' does not follow"),
        (("specs", "add", "cpu.2u8g"), "spec cpu.2u8g already exists"),
        (("specs", "delete", "cpu.1u1g"), "no spec named 'cpu.1u1g'"),
    ],
)
def test_bad_catalog_changes_are_refused_and_change_nothing(atelier, argv, message):
    before = listing(atelier, "images"), listing(atelier, "specs")
    code, _, err = atelier(*argv)
    assert code == 2
    assert message in err
    assert (listing(atelier, "images"), listing(atelier, "specs")) == before


def test_specs_add_disable_enable_delete(atelier):
    assert atelier("specs", "add", "cpu.4u16g")[0] == 0
    assert atelier("specs", "disable", "cpu.4u16g")[0] == 0
    assert listing(atelier, "specs")["cpu.4u16g"]["disabled"] is True
    assert atelier("specs", "enable", "cpu.4u16g")[0] == 0
    assert listing(atelier, "specs")["cpu.4u16g"]["disabled"] is False
    assert atelier("specs", "delete", "cpu.4u16g")[0] == 0
    assert "cpu.4u16g" not in listing(atelier, "specs")


def test_token_needs_the_hub_state_and_says_where_it_looked(atelier, tmp_path):
    code, _, err = atelier("token", "admin")
    assert code == 2 and len(err.splitlines()) == 1
    assert f"no hub state at {tmp_path}/jupyterhub.sqlite" in err and "atelier run" in err


def test_a_relative_data_dir_is_the_projects_wherever_the_cli_runs(tmp_path, monkeypatch):
    """As `make run` keeps it (./.atelier in the project), not in the caller's directory."""
    config = yaml.safe_load(DEFAULT_CONFIG.read_text()) | {"data_dir": "no-such-state"}
    path = tmp_path / "atelier.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ATELIER_CONFIG", str(path))
    code, _, err = run_cli("token", "admin")
    assert code == 2
    assert f"no hub state at {PROJECT_ROOT}/no-such-state/jupyterhub.sqlite" in err
    assert not (PROJECT_ROOT / "no-such-state").exists()


def test_token_expiry_out_of_range_is_refused(atelier):
    code, _, err = atelier("token", "admin", "--expires-in-days", "-1")
    assert code == 2 and "--expires-in-days: must be from 0 (never) to 3650, got -1" in err


def run_cli(*argv) -> tuple[int, str, str]:
    """The real `atelier` command, as a user runs it."""
    result = subprocess.run(
        [sys.executable, "-m", "atelier.hub.cli.main", *argv], capture_output=True, text=True
    )
    return result.returncode, result.stdout, result.stderr


@pytest.mark.parametrize(
    "argv, env, message",
    [
        (
            ("instances", "list"),
            {},
            "atelier: no API token: pass --token or set JUPYTERHUB_API_TOKEN",
        ),
        (
            ("instances", "list"),
            {"JUPYTERHUB_API_TOKEN": "x"},
            "atelier: cannot reach the Atelier API at http://127.0.0.1:{port}/services/atelier/api/v1",
        ),
        (
            ("audit", "--url", "http://127.0.0.1:{port}/services/atelier/api/v1"),
            {"JUPYTERHUB_API_TOKEN": "x"},
            "atelier: cannot reach the Atelier API at http://127.0.0.1:{port}/",
        ),
        (
            ("instances", "create", "exp-1", "--spec", "cpu.2u4g", "--token", "x"),
            {},
            "atelier: `atelier instances create` needs --image and --spec",
        ),
        (
            (
                "instances",
                "create",
                "exp-1",
                "--image",
                BASE,
                "--spec",
                "cpu.2u4g",
                "--tag",
                "team",
            ),
            {},
            "atelier: --tag: 'team' is not key=value",
        ),
        (
            ("instances", "delete", "exp-5", "--token", "x"),
            {},
            "atelier: deleting exp-5 deletes its work volume and every file on it: "
            "add --delete-volume",
        ),
    ],
)
def test_api_commands_fail_with_one_line_and_no_traceback(tmp_path, argv, env, message):
    """Without ATELIER_API_URL the CLI looks for the hub of this machine's atelier.yaml."""
    port = free_port()
    path = config_file(tmp_path, port=port)
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("ATELIER_", "JUPYTERHUB_"))}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "atelier.hub.cli.main",
            "--config",
            path,
            *(a.format(port=port) for a in argv),
        ],
        capture_output=True,
        text=True,
        env={**environ, **env},
    )
    assert result.returncode == 2
    assert result.stderr.startswith(message.format(port=port)), result.stderr
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr


def test_configuration_errors_stop_the_cli(tmp_path, atelier):
    bad = tmp_path / "bad.yaml"
    bad.write_text("port: 1\nimages: []\nspecs: []\n")
    code, _, err = atelier("--config", str(bad), "images", "list")
    assert code == 2 and "images: List should have at least 1 item" in err


def config_file(tmp_path, **changes) -> str:
    config = yaml.safe_load(DEFAULT_CONFIG.read_text())
    config.update(data_dir=str(tmp_path / "data"), **changes)
    path = tmp_path / "atelier.yaml"
    path.write_text(yaml.safe_dump(config))
    (tmp_path / "data").mkdir(exist_ok=True)
    return str(path)


@pytest.mark.parametrize(
    "devices, built",
    [
        ([], {BASE, TORCH}),  # a CPU-only machine: no GPU or Ascend environment
        ([{"kind": "gpu", "type": "a100", "index": 0}], {BASE, TORCH, CUDA}),
    ],
)
def test_run_builds_every_image_this_machine_can_run_built_or_not(tmp_path, devices, built):
    """A fresh `atelier run` builds the images the form will offer (never the aarch64
    Ascend image on this machine), though none of them is built yet."""
    settings = load_settings(
        config_file(tmp_path, envs_dir=str(tmp_path / "envs"), devices=devices)
    )
    assert set(buildable_images(settings)) == built


def test_images_build_prints_which_image_and_each_step(tmp_path, envs_dir, capsys):
    path = config_file(tmp_path, envs_dir=str(envs_dir))
    assert main(["--config", path, "images", "build", BASE, TORCH]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"[1/2] {BASE}: already built"
    assert f"[2/2] {TORCH}: installing Atelier's extension" in lines
    assert re.fullmatch(rf"\[2/2\] {TORCH}: done in \d+ s", lines[-1])


def test_a_second_build_of_an_environment_waits_for_the_first_then_finds_it_built(
    tmp_path, envs_dir
):
    """Two builds of one environment at once (two `atelier run`s) would remove each other's
    half-built one: the second waits until the first is done."""
    path = config_file(tmp_path, envs_dir=str(envs_dir))
    with open(envs_dir / f".{BASE}.lock", "a") as first:  # a build holds it
        fcntl.flock(first, fcntl.LOCK_EX)
        second = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "atelier.hub.cli.main",
                "--config",
                path,
                "images",
                "build",
                BASE,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert second.stdout.readline() == (
            f"[1/1] {BASE}: waiting for another build of this environment to end\n"
        )
        time.sleep(1)
        assert second.poll() is None
    output, _ = second.communicate(timeout=120)
    assert output.startswith(f"[1/1] {BASE}: already built\n")
    assert second.returncode == 0


def test_a_half_built_environment_is_not_built(tmp_path):
    """What a build cut off by a crash leaves (pip had installed JupyterHub) is never offered."""
    half = tmp_path / BASE / "bin"
    half.mkdir(parents=True)
    (half / "jupyterhub-singleuser").write_text("#!/bin/sh\n")
    assert built_envs(tmp_path) == frozenset()
    (tmp_path / BASE / STAMP).write_text("")
    assert built_envs(tmp_path) == {BASE}


def test_an_interrupted_build_leaves_no_environment(tmp_path):
    """Ctrl-C in the middle of `atelier images build` removes what it had made."""
    envs = tmp_path / "envs"
    path = config_file(tmp_path, envs_dir=str(envs))
    build = subprocess.Popen(
        [sys.executable, "-m", "atelier.hub.cli.main", "--config", path, "images", "build", BASE],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as in a terminal: a suite started in the background (`make test &`) ignores SIGINT
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    for line in build.stdout:
        if "installing packages" in line:
            break
    assert (envs / BASE / "bin" / "pip").exists()  # pip is at work in the new environment
    build.send_signal(signal.SIGINT)
    _, err = build.communicate(timeout=60)
    assert (build.returncode, err) == (130, "atelier: interrupted\n")
    assert not (envs / BASE).exists()


def test_a_catalog_command_before_the_first_run_keeps_the_state_private(tmp_path):
    """`atelier images list` before `atelier run` makes the data dir and the store: the hub's
    private state, 0700 and 0600, as `atelier run` would have made them."""
    state = tmp_path / "state"
    atelier = [os.path.join(os.path.dirname(sys.executable), "atelier")]
    subprocess.run([*atelier, "images", "--data-dir", str(state), "list"], check=True)
    assert state.stat().st_mode & 0o777 == 0o700
    assert {f.stat().st_mode & 0o777 for f in state.iterdir()} == {0o600}
