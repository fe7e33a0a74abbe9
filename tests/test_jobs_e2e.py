"""Training jobs on the local backend, for real: torchrun ranks as the owner's account in the
instance's work volume, a 2 x 2 group proving itself with an all-reduce, a rank killed
mid-run and the job resuming from its checkpoint, and the queue for devices (another user and
bad input: test_job_attacks_e2e.py); the job widget and, with the same instance, the
deployment widget deploying a trained job's output in a real JupyterLab."""

import os
import pwd
import re
import signal
import time
from pathlib import Path

import pytest
from conftest import EXAMPLE, FAKE_GPU, TORCH, environ_of, uid_of
from notebooks import button, labelled, open_new_notebook, run_cell, wait_for_output
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select
from test_pages_e2e import browser_home

pytestmark = pytest.mark.e2e


def with_example(hub, user: str, instance: str, token: str) -> str:
    """A running instance on the PyTorch image, the example script in its work volume."""
    hub.start(user, instance, token, {"image": TORCH, "spec": "cpu.2u8g"})
    hub.upload(user, instance, EXAMPLE, "train.py")
    return token


@pytest.fixture(scope="module")
def alice(hub):
    return with_example(hub, "alice", "lab", hub.add_user("alice"))


def submit(hub, token, **fields):
    body = {"image": TORCH, "spec": "cpu.2u8g", "volume": "lab", "script": "train.py", **fields}
    return hub.atelier("POST", "/jobs", token, json=body)


def job(hub, token, name, owner="alice"):
    return hub.atelier("GET", f"/jobs/{owner}/{name}", token).json()


def ended(hub, token, name, timeout=120) -> dict:
    def finished():
        now = job(hub, token, name)
        return now if now["status"] in ("completed", "failed", "stopped") else None

    return hub.wait_for(finished, timeout, f"job {name} to end")


def events(hub, token, name) -> list[str]:
    response = hub.atelier("GET", f"/jobs/alice/{name}/events", token)
    return [event["message"] for event in response.json()["events"]]


def log(hub, token, name, rank=0) -> str:
    return hub.atelier("GET", f"/jobs/alice/{name}/logs", token, params={"rank": rank}).text


def test_two_nodes_of_two_processes_form_one_group_of_four(hub, alice):
    response = submit(hub, alice, name="ddp", nodes=2, processes_per_node=2, args=["--steps=20"])
    assert response.status_code == 201, response.text
    assert response.json()["world_size"] == 4
    done = ended(hub, alice, "ddp")
    assert done["status"] == "completed", (done, log(hub, alice, "ddp"))
    for rank in range(4):
        assert "all_reduce world_size=4 sum=10.0" in log(hub, alice, "ddp", rank)
    said = events(hub, alice, "ddp")
    assert said[0] == "queued" and said[-1] == "completed", said
    assert any(e.startswith("started: 2 node(s) x 2 process(es), gloo") for e in said), said
    metrics = hub.atelier("GET", "/jobs/alice/ddp/metrics", alice).json()
    assert [step for step, _ in metrics["series"]["loss"]][:3] == [1, 2, 3], metrics
    audit = hub.atelier("GET", "/audit", params={"action": "createTrainJob"}).json()
    assert any(e["resource"] == "alice/ddp" for e in audit["events"])


def ranks_of(name: str) -> dict[int, int]:
    """The job's rank processes on this machine: rank -> pid."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                environment = environ_of(int(entry.name))
            except OSError:
                continue
            rank = environment.get("RANK") if environment.get("ATELIER_JOB") == name else None
            if rank is not None and b"train.py" in (entry / "cmdline").read_bytes():  # not torchrun
                found[int(rank)] = int(entry.name)
    return found


def test_a_killed_rank_restarts_the_job_from_its_checkpoint(hub, alice):
    args = ["--steps=60", "--checkpoint-every=10", "--step-seconds=0.1"]
    response = submit(hub, alice, name="resilient", processes_per_node=2, retries=2, args=args)
    assert response.status_code == 201, response.text
    hub.wait_for(
        lambda: (job(hub, alice, "resilient")["checkpoint_step"] or 0) >= 20,
        60,
        "a checkpoint at step 20",
    )
    ranks = ranks_of("resilient")
    assert uid_of(ranks[1]) == pwd.getpwnam(hub.account("alice")).pw_uid  # the owner's account
    environment = environ_of(ranks[1])
    assert not {"JUPYTERHUB_API_TOKEN", "ATELIER_CONFIG"} & set(environment)  # no hub secrets
    assert environment["ATELIER_CHECKPOINT_DIR"].endswith("/lab/jobs/resilient/checkpoints")
    group = f"atelier/{hub.account('alice')}.resilient.0"
    assert f"memory:/{group}" in Path(f"/proc/{ranks[1]}/cgroup").read_text()
    limit = Path(f"/sys/fs/cgroup/memory/{group}/memory.limit_in_bytes").read_text()
    assert int(limit) == 8 * 1024**3  # the spec's memory, for the node's ranks together
    os.kill(ranks[1], signal.SIGKILL)
    done = ended(hub, alice, "resilient")
    said = events(hub, alice, "resilient")
    assert done["status"] == "completed", (done, said)
    assert "rank 1 exited 137 (SIGKILL)" in said, said
    restart = next(e for e in said if e.startswith("restarting 1/2 from checkpoint step "))
    step = int(restart.rsplit(" ", 1)[1])
    assert step >= 20
    assert f"resumed from step {step}" in log(hub, alice, "resilient")
    assert done["restarts"] == 1 and done["attempt"] == 2


def test_a_stopped_job_resumes_from_its_checkpoint(hub, alice):
    args = ["--steps=400", "--checkpoint-every=5", "--step-seconds=0.1"]
    assert submit(hub, alice, name="pausable", args=args).status_code == 201
    hub.wait_for(lambda: job(hub, alice, "pausable")["checkpoint_step"], 60, "a checkpoint")
    assert hub.atelier("POST", "/jobs/alice/pausable/stop", alice).status_code == 202
    stopped = ended(hub, alice, "pausable")
    assert stopped["status"] == "stopped"
    assert not ranks_of("pausable")
    resumed = hub.atelier("POST", "/jobs/alice/pausable/resume", alice)
    assert resumed.status_code == 202, resumed.text
    step = stopped["checkpoint_step"]
    hub.wait_for(lambda: f"resumed from step {step}" in log(hub, alice, "pausable"), 60, "resume")
    assert hub.atelier("DELETE", "/jobs/alice/pausable", alice).status_code == 204
    assert not ranks_of("pausable")
    assert hub.atelier("GET", "/jobs/alice/pausable", alice).status_code == 404


def test_a_job_outlives_a_hub_restart_and_is_followed_to_its_end(hub, alice):
    args = ["--steps=150", "--step-seconds=0.1"]
    assert submit(hub, alice, name="durable", args=args).status_code == 201
    hub.wait_for(lambda: ranks_of("durable"), 60, "the job's rank")
    before = ranks_of("durable")
    usage = hub.atelier("GET", "/jobs/alice/durable/metrics", alice).json()["usage"]
    assert usage["memory_bytes"] > 0 and usage["cpu_seconds"] >= 0, usage
    hub.restart(kill=True)
    assert ranks_of("durable") == before  # the same processes, never restarted
    assert job(hub, alice, "durable")["status"] == "running"
    followed = hub.atelier(
        "GET", "/jobs/alice/durable/logs", alice, params={"follow": 1}, stream=True
    )
    lines = [line.decode() for line in followed.iter_lines()]  # until the job has ended
    assert lines[-1] == "done" and "step 150 loss" in lines[-2]
    assert job(hub, alice, "durable")["status"] == "completed"
    tail = hub.atelier("GET", "/jobs/alice/durable/logs", alice, params={"tail": 2}).text
    assert tail.splitlines() == lines[-2:]
    download = hub.atelier("GET", "/jobs/alice/durable/logs", alice, params={"download": 1})
    assert (
        download.headers["Content-Disposition"] == 'attachment; filename="alice-durable-rank-0.log"'
    )
    assert download.text.splitlines() == lines


def test_a_job_waits_in_the_queue_for_devices_an_instance_holds(hub, alice):
    token = hub.add_user("carol")
    hub.start("carol", "gpu", token, {"image": FAKE_GPU, "spec": "gpu.2xa100.16u128g"})
    devices = "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"
    body = {"name": "queued", "image": FAKE_GPU, "spec": "gpu.1xa100.8u64g", "volume": "gpu",
            "command": ["python", "-c", devices]}  # fmt: skip
    assert hub.atelier("POST", "/jobs", token, json=body).status_code == 201
    time.sleep(2)
    pending = hub.atelier("GET", "/jobs/carol/queued", token).json()
    assert pending["status"] == "pending"
    assert pending["reason"] == "waiting for 1 a100 GPUs (0 free)"
    assert hub.api("DELETE", "/users/carol/servers/gpu", token).status_code in (202, 204)
    hub.wait_for(
        lambda: hub.atelier("GET", "/jobs/carol/queued", token).json()["status"] == "completed",
        60,
        "the queued job to run",
    )
    said = [
        e["message"]
        for e in hub.atelier("GET", "/jobs/carol/queued/events", token).json()["events"]
    ]
    assert "devices allocated: a100 0" in said, said
    shown = hub.atelier("GET", "/jobs/carol/queued/logs", token).text
    assert shown == "0\n"  # its one device, as the instance that held both had them
    # the job kept the stopped instance's volume attached; deleting the instance lets it go
    deleted = hub.api("DELETE", "/users/carol/servers/gpu", token,
                      json={"remove": True, "confirm": "delete-volume"})  # fmt: skip
    assert deleted.status_code in (202, 204), deleted.text
    hub.wait_for(lambda: "gpu" not in hub.servers("carol"), 60, "carol's instance to go")
    assert not os.path.ismount(hub.volume("carol", "gpu"))


@pytest.fixture(scope="module")
def admin(hub):
    """The admin's instance for the widgets, the example in its volume."""
    return with_example(hub, "admin", "widgets", hub.admin_token)


def test_the_widget_in_jupyterlab_submits_and_follows_a_real_job(hub, browser, admin):
    browser_home(hub, browser)
    panel = open_new_notebook(browser, f"{hub.url}/user/admin/widgets/lab")
    cell = run_cell(
        browser, panel, "from atelier.widgets import TrainingJobForm\nTrainingJobForm()"
    )
    wait_for_output(cell, text="Submit", selector="button.jupyter-button")
    assert (
        "PyTorch"
        in labelled(cell, "dropdown", "Image").find_element(By.CSS_SELECTOR, "option:checked").text
    )
    labelled(cell, "text", "Job name").send_keys("from-widget")
    labelled(cell, "textarea", "Hyperparameters").send_keys("steps=200\nstep-seconds=0.05")
    button(cell, "Submit").click()
    wait_for_output(cell, text="from-widget running", selector=".widget-html", timeout=90)
    wait_for_output(cell, text="all_reduce world_size=1 sum=1.0", selector=".widget-html pre")
    wait_for_output(cell, selector="svg polyline")  # the loss, live
    submitted = hub.atelier("GET", "/jobs/admin/from-widget").json()
    assert submitted["argv"] == ["train.py", "--steps=200", "--step-seconds=0.05"]
    button(cell, "Stop").click()
    wait_for_output(cell, text="from-widget stopped", selector=".widget-html", timeout=60)
    assert hub.atelier("GET", "/jobs/admin/from-widget").json()["status"] == "stopped"


def trained(hub, name: str, instance: str) -> dict:
    """The admin's job `name` (y = 3x + 2 learnt, as test_deployments_e2e's) once completed."""
    response = submit(
        hub, hub.admin_token, name=name, volume=instance, processes_per_node=2, args=["--steps=40"]
    )
    assert response.status_code == 201, response.text

    def finished():
        now = hub.atelier("GET", f"/jobs/admin/{name}").json()
        return now if now["status"] in ("completed", "failed", "stopped") else None

    return hub.wait_for(finished, 180, f"job {name} to end")


def test_the_deployment_widget_deploys_a_trained_model_and_answers_a_test_request(
    hub, browser, admin
):
    done = trained(hub, "fit", "widgets")
    assert done["status"] == "completed", done
    browser_home(hub, browser)
    panel = open_new_notebook(browser, f"{hub.url}/user/admin/widgets/lab")
    code = "from atelier.widgets import DeploymentForm\nDeploymentForm()"
    cell = run_cell(browser, panel, code, timeout=120)  # the kernel's first start included
    wait_for_output(cell, text="Deploy", selector="button.jupyter-button")
    chosen = Select(labelled(cell, "dropdown", "Training job")).first_selected_option.text
    assert chosen == "fit"  # the newest completed job of yours, its image and spec with it
    image = Select(labelled(cell, "dropdown", "Image")).first_selected_option
    assert image.get_attribute("value") == TORCH or "PyTorch" in image.text
    labelled(cell, "text", "Name").send_keys("line")
    button(cell, "Deploy").click()
    status = wait_for_output(cell, text="line running", selector=".widget-html", timeout=180)
    assert "version 1 serving" in status.text, status.text
    wait_for_output(cell, text=f"{hub.url}/deployments/admin/line", selector=".widget-html")
    wait_for_output(cell, text="1 asked, 1 live: #1 ready", selector=".widget-html")
    wait_for_output(cell, text="version 1 serves every request", selector=".widget-html")

    button(cell, "Create key").click()
    shown = wait_for_output(cell, text="shown this once", selector=".widget-html")
    key = shown.find_element(By.CSS_SELECTOR, "code").text
    assert re.fullmatch(r"ak_[0-9a-f]{12}\.[A-Za-z0-9_-]{43}", key), key
    listed = hub.atelier("GET", "/deployments/admin/line/keys").json()["keys"]
    assert [k["prefix"] for k in listed] == [key.split(".")[0]]

    labelled(cell, "textarea", "Inputs").send_keys("1.0, 2.0")
    button(cell, "Send").click()
    answer = wait_for_output(cell, text="Answer", selector=".widget-html", timeout=60)
    values = re.search(r"\[2, 1\]: (.+)", answer.text)
    assert values, answer.text
    assert [round(float(v)) for v in values[1].split(",")] == [5, 8], answer.text  # 3x + 2
    # the router counts requests every 2 s; the monitor shows them at its next poll
    wait_for_output(cell, text="1 (0 errors)", selector=".widget-html", timeout=60)

    deployment = hub.atelier("GET", "/deployments/admin/line").json()
    assert deployment["status"] == "running" and deployment["serving_version"] == 1, deployment
    assert deployment["model"] == "jobs/fit" and deployment["image"] == TORCH
    assert deployment["metrics"]["requests"] == 1 and deployment["metrics"]["errors"] == 0
