"""atelier.widgets: the training job form, monitor and list, and the deployment form and
monitor, against an in-memory stand-in for the SDK's Client; the pure rendering in
atelier.widgets.render, case by case."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest

from atelier.sdk import AtelierError
from atelier.widgets import (
    DeploymentForm,
    DeploymentMonitor,
    JobList,
    JobMonitor,
    TrainingJobForm,
    training_job_form,
)
from atelier.widgets.render import (
    MOST_POINTS,
    answer_html,
    clean_points,
    default_image,
    deployment_details_html,
    deployment_status_html,
    events_html,
    fits,
    jobs_table_html,
    log_html,
    metric_chart,
    metrics_html,
    parse_hyperparameters,
    parse_inputs,
    polyline_points,
    readable_log,
    scale,
    short_time,
    status_html,
    usage_text,
)

IMAGES = [
    {"name": "python_3.11-cpu-py_3.11-debian_12-x86_64", "display_name": "Python 3.11",
     "flavor": "cpu", "status": "active"},
    {"name": "pytorch_2.4.0-cuda_12.4-py_3.11-ubuntu_22.04-x86_64", "display_name": "",
     "flavor": "gpu", "accelerator_types": ["a100"], "status": "active"},
    {"name": "pytorch_2.13.0-cpu-py_3.11-debian_12-x86_64", "display_name": "PyTorch 2.13",
     "flavor": "cpu", "status": "active"},
    {"name": "pytorch_1.0.0-cpu-py_3.11-debian_12-x86_64", "display_name": "Old",
     "flavor": "cpu", "status": "disabled"},
]  # fmt: skip
SPECS = [
    {"name": "cpu.2u8g", "display_name": "2 cores, 8 GB", "flavor": "cpu"},
    {"name": "cpu.8u32g", "display_name": "", "flavor": "cpu"},
    {"name": "gpu.1xa100.8u64g", "flavor": "gpu", "accelerator_type": "a100"},
    {"name": "gpu.1xv100.8u64g", "flavor": "gpu", "accelerator_type": "v100"},
    {"name": "cpu.64u512g", "flavor": "cpu", "disabled": True},
]


class FakeClient:
    """The SDK's job, deployment and catalog calls over in-memory jobs and deployments;
    records every call."""

    user = "alice"

    def __init__(self, images=IMAGES, specs=SPECS):
        self._images, self._specs = images, specs
        self.calls: list[tuple] = []
        self.store: dict[str, dict] = {}
        self.events: dict[str, list[dict]] = {}
        self.logs: dict[str, str] = {}
        self.series: dict[str, dict] = {}
        self.refuse: AtelierError | None = None  # what create_job and create_deployment raise
        self.deployed: dict[str, dict] = {}
        self.deployment_log: dict[str, list[dict]] = {}
        self.keys = 0
        self.answer_error: Exception | None = None  # what predict raises

    def images(self, offered=False):
        return self._images

    def specs(self, available=False):
        return self._specs

    def create_job(self, name, *, image, spec, **options):
        self.calls.append(("create_job", name, image, spec, options))
        if self.refuse is not None:
            raise self.refuse
        job = {"name": name, "image": image, "spec": spec, "status": "pending", "reason": None,
               "attempt": 1, "restarts": 0, "checkpoint_step": None,
               "nodes": options.get("nodes", 1),
               "processes_per_node": options.get("processes_per_node", 1)}  # fmt: skip
        job["world_size"] = job["nodes"] * job["processes_per_node"]
        self.store[name] = job
        self.events[name] = [{"time": "2026-12-02T06:10:04.851286+00:00", "message": "queued"}]
        self.logs[name] = ""
        self.series[name] = {}
        return job

    def jobs(self, owner=None):
        self.calls.append(("jobs",) if owner is None else ("jobs", owner))
        return list(self.store.values())

    def job(self, name):
        self.calls.append(("job", name))
        if name not in self.store:
            raise AtelierError(404, "not_found", f"no job {name}")
        return dict(self.store[name])

    def job_events(self, name):
        return self.events[name]

    def job_logs(self, name, rank=0, tail=50):
        self.calls.append(("job_logs", name, rank, tail))
        return self.logs[name]

    def job_metrics(self, name):
        return {"series": self.series[name], "usage": {"cpu_seconds": 12.5}}

    def stop_job(self, name):
        self.calls.append(("stop_job", name))
        self.store[name]["status"] = "stopped"
        return self.store[name]

    def resume_job(self, name):
        self.calls.append(("resume_job", name))
        self.store[name].update(status="pending", attempt=self.store[name]["attempt"] + 1)
        return self.store[name]

    def create_deployment(self, name, *, image, spec, **options):
        self.calls.append(("create_deployment", name, image, spec, options))
        if self.refuse is not None:
            raise self.refuse
        self.deployed[name] = {
            "name": name, "owner": "alice", "status": "deploying", "reason": None, "version": 1,
            "serving_version": None, "image": image, "spec": spec,
            "replicas": options.get("replicas", 1), "url": f"/deployments/alice/{name}",
            "replicas_now": [], "metrics": {"requests": 0, "errors": 0,
                                            "latency_ms": {"p50": None, "p99": None}},
        }  # fmt: skip
        self.deployment_log[name] = [
            {"time": "2026-12-02T06:10:04+00:00", "message": "version 1 created"}
        ]
        return dict(self.deployed[name])

    def deployment(self, name, owner=None):
        self.calls.append(("deployment", name, owner))
        if name not in self.deployed:
            raise AtelierError(404, "not_found", f"no deployment alice/{name}")
        return dict(self.deployed[name])

    def deployment_events(self, name, owner=None):
        return self.deployment_log[name]

    def hub_address(self, hub_url=None):
        return "http://127.0.0.1:8000"

    def create_app_key(self, name, owner=None):
        self.calls.append(("create_app_key", name, owner))
        self.keys += 1
        prefix = f"ak_{self.keys:012x}"
        return {
            "prefix": prefix,
            "created": "2026-12-02T06:12:00+00:00",
            "key": f"{prefix}.{'s' * 43}",
        }

    def predict(self, name, inputs, *, key, owner=None):
        self.calls.append(("predict", name, inputs, key, owner))
        if self.answer_error is not None:
            raise self.answer_error
        data = [3 * row[0] + 2 for row in inputs["x"]] if isinstance(inputs, dict) else [0.0]
        self.deployed[name]["metrics"]["requests"] += 1
        output = {"name": "y", "shape": [len(data), 1], "datatype": "FP32", "data": data}
        return {"model_name": name, "outputs": [output]}


@pytest.fixture
def client():
    return FakeClient()


def form_for(client, **values):
    form = TrainingJobForm(client=client, every=None)
    for key, value in values.items():
        getattr(form, key).value = value
    return form


# the form


def test_form_offers_the_catalog_with_a_pytorch_image_chosen(client):
    form = TrainingJobForm(client=client, every=None)
    assert form.image.options == (
        ("Python 3.11", "python_3.11-cpu-py_3.11-debian_12-x86_64"),
        ("pytorch_2.4.0-cuda_12.4-py_3.11-ubuntu_22.04-x86_64",) * 2,
        ("PyTorch 2.13", "pytorch_2.13.0-cpu-py_3.11-debian_12-x86_64"),
    )  # the disabled image is not offered
    assert form.image.value == "pytorch_2.4.0-cuda_12.4-py_3.11-ubuntu_22.04-x86_64"
    assert form.spec.options == (("gpu.1xa100.8u64g", "gpu.1xa100.8u64g"),)  # flavor and type
    assert form.spec.value == "gpu.1xa100.8u64g"
    form.image.value = "pytorch_2.13.0-cpu-py_3.11-debian_12-x86_64"
    assert form.spec.options == (("2 cores, 8 GB", "cpu.2u8g"), ("cpu.8u32g", "cpu.8u32g"))
    assert form.spec.value == "cpu.2u8g"
    form.spec.value = "cpu.8u32g"
    form.image.value = "python_3.11-cpu-py_3.11-debian_12-x86_64"
    assert form.spec.value == "cpu.8u32g"  # a choice that still fits is kept
    assert (form.nodes.min, form.nodes.max, form.nodes.value) == (1, 8, 1)
    assert (form.processes_per_node.min, form.processes_per_node.max) == (1, 8)
    assert form.script.value == "train.py"
    assert form.submit_button.description == "Submit"
    assert form.monitor is None and form.error.value == ""
    assert isinstance(training_job_form(client), TrainingJobForm)


def test_form_without_a_runnable_pytorch_image_chooses_the_first():
    images = [IMAGES[0], IMAGES[1]]  # the GPU PyTorch image has no spec here
    form = TrainingJobForm(client=FakeClient(images, SPECS[:2]), every=None)
    assert form.image.value == IMAGES[1]["name"]  # still PyTorch: there is no other
    form = TrainingJobForm(client=FakeClient([IMAGES[0]], SPECS), every=None)
    assert form.image.value == IMAGES[0]["name"]
    empty = TrainingJobForm(client=FakeClient([], []), every=None)
    assert empty.image.value is None and empty.spec.value is None


def test_form_shows_a_catalog_that_cannot_be_read(client):
    def refuse(offered=False):
        raise AtelierError(403, "forbidden", "<b>no</b> access")

    client.images = refuse
    form = TrainingJobForm(client=client, every=None)
    assert "&lt;b&gt;no&lt;/b&gt; access" in form.error.value and "#c62828" in form.error.value
    assert form.image.options == ()


def test_submit_sends_the_form_and_shows_the_monitor(client):
    form = form_for(
        client,
        image="pytorch_2.13.0-cpu-py_3.11-debian_12-x86_64",
        nodes=2,
        processes_per_node=4,
        script=" mnist/train.py ",
        hyperparameters="lr=0.01\nepochs=10\n\n# a comment\noptimizer=adam\nname='3'",
        name=" mnist-1 ",
    )
    form.submit_button.click()
    assert client.calls[0] == (
        "create_job",
        "mnist-1",
        "pytorch_2.13.0-cpu-py_3.11-debian_12-x86_64",
        "cpu.2u8g",
        {
            "script": "mnist/train.py",
            "hyperparameters": {"lr": 0.01, "epochs": 10, "optimizer": "adam", "name": "3"},
            "nodes": 2,
            "processes_per_node": 4,
        },
    )
    assert isinstance(form.monitor, JobMonitor) and form.monitor.name == "mnist-1"
    assert form.monitor_box.children == (form.monitor,)
    assert "mnist-1" in form.monitor.status.value and "pending" in form.monitor.status.value
    assert form.error.value == "" and not form.submit_button.disabled
    first = form.monitor
    form.name.value = "mnist-2"
    form.submit()
    assert form.monitor is not first and form.monitor_box.children == (form.monitor,)


@pytest.mark.parametrize(
    ("field", "label"),
    [
        ("spec", "Spec"),
        ("processes_per_node", "Processes per node"),
        ("hyperparameters", "Hyperparameters"),
        ("volume", "volume"),  # not on the form: the hub's name for it
    ],
)
def test_a_refusal_is_shown_naming_the_field(client, field, label):
    client.refuse = AtelierError(400, "invalid", "needs 2 A100 GPUs; 1 is free <now>", field)
    form = form_for(client, name="big")
    assert form.submit() is None
    assert form.error.value == (
        f'<span style="color: #c62828">{label}: needs 2 A100 GPUs; 1 is free &lt;now&gt;</span>'
    )
    assert form.monitor is None and not form.submit_button.disabled


def test_a_refusal_without_a_field_and_a_failed_connection_are_shown(client):
    client.refuse = AtelierError(409, "conflict", "a job mnist exists")
    form = form_for(client, name="mnist")
    form.submit()
    assert form.error.value == '<span style="color: #c62828">a job mnist exists</span>'
    client.refuse = ConnectionRefusedError(111, "Connection refused")
    form.submit()
    assert "ConnectionRefusedError" in form.error.value


def test_the_form_checks_the_name_and_hyperparameters_before_sending(client):
    form = form_for(client, name="  ")
    form.submit()
    assert "Job name: give the job a name" in form.error.value
    form = form_for(client, name="ok", hyperparameters="lr=0.1\nlr 0.2")
    form.submit()
    assert "Hyperparameters: line 2: write key=value, got &#x27;lr 0.2&#x27;" in form.error.value
    assert client.calls == []
    form.hyperparameters.value = "lr=0.1"
    form.submit()
    assert form.error.value == "" and client.calls[0][0] == "create_job"


# the monitor


def test_monitor_shows_status_events_log_and_metrics(client):
    client.create_job("mnist", image="i", spec="s", nodes=2, processes_per_node=2)
    client.store["mnist"].update(status="running", checkpoint_step=20, attempt=2, restarts=1)
    client.events["mnist"].append({"time": "2026-12-02T06:11:00+00:00", "message": "started"})
    client.logs["mnist"] = "epoch 1\n<script>alert(1)</script>\n\x1eatelier-metrics {}\n"
    client.series["mnist"] = {"loss": [[1, 2.0], [2, 1.0]], "accuracy": [[1, 0.5]]}
    monitor = JobMonitor("mnist", client=client, every=None)
    assert monitor.status.value == (
        '<b>mnist</b> <span style="color: #1565c0; font-weight: bold">running</span>'
        " · attempt 2 · restarts 1 · checkpoint at step 20 · 4 processes (2 × 2)"
    )
    assert "<code>2026-12-02 06:10:04</code> queued" in monitor.events.value
    assert "<code>2026-12-02 06:11:00</code> started" in monitor.events.value
    assert "epoch 1\n&lt;script&gt;alert(1)&lt;/script&gt;</pre>" in monitor.logs.value
    assert "<script>" not in monitor.logs.value and "atelier-metrics" not in monitor.logs.value
    assert ("job_logs", "mnist", 0, 40) in client.calls
    assert monitor.metrics.value.index(">loss ") < monitor.metrics.value.index(">accuracy ")
    assert "<polyline" in monitor.metrics.value
    assert monitor.usage.value == "CPU 12.5 s"
    assert not monitor.stop_button.disabled and monitor.resume_button.disabled


def test_monitor_escapes_what_the_job_owner_wrote(client):
    name = '<img src=x onerror="alert(1)">'
    client.create_job(name, image="i", spec="s")
    client.store[name].update(status="failed", reason="<b>rank 3</b> exited 137")
    client.events[name] = [{"time": "<i>", "message": "<script>x</script>"}]
    client.series[name] = {"<svg onload=alert(1)>": [[1, 1.0]]}
    monitor = JobMonitor(name, client=client, every=None)
    shown = monitor.status.value + monitor.events.value + monitor.metrics.value
    for raw in ("<img", "<script>", "<b>rank", "<svg onload", "<i>"):
        assert raw not in shown, raw
    assert "&lt;b&gt;rank 3&lt;/b&gt; exited 137" in monitor.status.value
    assert "&lt;svg onload=alert(1)&gt;" in monitor.metrics.value


@pytest.mark.parametrize(
    ("status", "stop", "resume"),
    [
        ("pending", True, False),
        ("running", True, False),
        ("completed", False, False),
        ("failed", False, True),
        ("stopped", False, True),
    ],
)
def test_stop_while_it_runs_resume_once_stopped_or_failed(client, status, stop, resume):
    client.create_job("j", image="i", spec="s")
    client.store["j"]["status"] = status
    monitor = JobMonitor("j", client=client, every=None)
    assert (not monitor.stop_button.disabled, not monitor.resume_button.disabled) == (stop, resume)


def test_stop_and_resume_call_the_hub(client):
    client.create_job("j", image="i", spec="s")
    client.store["j"]["status"] = "running"
    monitor = JobMonitor("j", client=client, every=None)
    monitor.stop_button.click()
    assert ("stop_job", "j") in client.calls
    assert "stopped" in monitor.status.value
    assert monitor.stop_button.disabled and not monitor.resume_button.disabled
    monitor.resume_button.click()
    assert ("resume_job", "j") in client.calls
    assert "pending" in monitor.status.value and "attempt 2" in monitor.status.value
    assert not monitor.stop_button.disabled and monitor.resume_button.disabled


def test_a_refused_stop_is_shown(client):
    client.create_job("j", image="i", spec="s")
    monitor = JobMonitor("j", client=client, every=None)

    def refuse(name):
        raise AtelierError(409, "conflict", "job j has ended")

    client.stop_job = refuse
    monitor.stop()
    assert monitor.error.value == '<span style="color: #c62828">job j has ended</span>'
    assert not monitor.stop_button.disabled and monitor.resume_button.disabled  # as before
    monitor.refresh()
    assert monitor.error.value == ""


def test_monitor_follows_until_the_job_ends_then_refreshes_once_more(client):
    client.create_job("j", image="i", spec="s")
    client.store["j"]["status"] = "running"
    monitor = JobMonitor("j", client=client, every=0.01)
    client.logs["j"] = "step 1"
    wait_for(lambda: "step 1" in monitor.logs.value)
    client.store["j"]["status"] = "completed"
    wait_for(lambda: monitor._thread is None)
    polls = client.calls.count(("job", "j"))
    time.sleep(0.1)
    assert client.calls.count(("job", "j")) == polls  # no more polling once it ended
    assert "completed" in monitor.status.value and monitor.resume_button.disabled
    monitor.close()


def test_monitor_follows_again_after_a_resume(client):
    client.create_job("j", image="i", spec="s")
    client.store["j"]["status"] = "stopped"
    monitor = JobMonitor("j", client=client, every=0.01)
    assert monitor._thread is None  # it has ended: nothing to follow
    monitor.resume()
    assert monitor._thread is not None
    client.store["j"]["status"] = "running"
    wait_for(lambda: "running" in monitor.status.value)
    monitor.close()
    wait_for(lambda: monitor._thread is None)


def test_monitor_stops_following_a_deleted_job(client):
    client.create_job("j", image="i", spec="s")
    monitor = JobMonitor("j", client=client, every=0.01)
    del client.store["j"]
    wait_for(lambda: monitor._thread is None)
    assert monitor.gone and "no job j" in monitor.error.value
    monitor.close()


def wait_for(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_refreshes_from_the_thread_and_a_button_do_not_interleave(client):
    client.create_job("j", image="i", spec="s")
    monitor = JobMonitor("j", client=client, every=None)
    inside, most = [0], [0]
    original = client.job_events

    def slow_events(name):
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        time.sleep(0.01)
        inside[0] -= 1
        return original(name)

    client.job_events = slow_events
    threads = [threading.Thread(target=monitor.refresh) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == [1]


# the list


def test_job_list_shows_the_jobs_and_refreshes(client):
    jobs = JobList(client=client)
    assert jobs.table.value == "<i>no training jobs yet</i>"
    client.create_job("<a>", image="img", spec="cpu.2u8g", nodes=2)
    client.store["<a>"].update(status="failed", reason="rank 1 exited 1")
    jobs.refresh_button.click()
    assert "&lt;a&gt;" in jobs.table.value and "<a>" not in jobs.table.value
    assert '<span style="color: #c62828">failed</span> (rank 1 exited 1)' in jobs.table.value
    assert client.calls.count(("jobs",)) == 2


def test_job_list_shows_a_refusal(client):
    def refuse():
        raise AtelierError(401, "unauthorized", "token expired")

    client.jobs = refuse
    jobs = JobList(client=client)
    assert "token expired" in jobs.error.value


# deployments


def deployment_form(client, **values):
    form = DeploymentForm(client=client, every=None)
    for key, value in values.items():
        getattr(form, key).value = value
    return form


def created(client) -> tuple:
    return next(call for call in reversed(client.calls) if call[0] == "create_deployment")


def completed(client, name, image=IMAGES[2]["name"], spec="cpu.8u32g"):
    client.create_job(name, image=image, spec=spec)
    client.store[name]["status"] = "completed"


def test_deployment_form_offers_your_completed_jobs_and_their_image_and_spec(client):
    completed(client, "fit")
    client.create_job("running", image="i", spec="s")  # not completed: not a model yet
    form = DeploymentForm(client=client, every=None)
    assert ("jobs", "alice") in client.calls  # an admin's own jobs, not everyone's
    assert form.source.value == "job" and form.job.options == ("fit",) and form.job.value == "fit"
    assert form.image.value == IMAGES[2]["name"] and form.spec.value == "cpu.8u32g"  # the job's
    assert form.job.layout.display == "" and form.model.layout.display == "none"
    form.source.value = "model"
    assert form.job.layout.display == "none" and form.model.layout.display == ""
    assert (form.replicas.min, form.replicas.value, form.replicas.max) == (1, 1, 8)
    empty = DeploymentForm(client=FakeClient(), every=None)
    assert empty.source.value == "model" and empty.job.value is None
    assert empty.image.value == IMAGES[1]["name"]  # as the training form: PyTorch


def test_deploy_sends_the_job_or_the_directory_and_shows_the_monitor(client):
    completed(client, "fit")
    form = deployment_form(client, name=" line ", replicas=2)
    form.deploy_button.click()
    assert created(client) == (
        "create_deployment", "line", IMAGES[2]["name"], "cpu.8u32g", {"replicas": 2, "job": "fit"}
    )  # fmt: skip
    assert isinstance(form.monitor, DeploymentMonitor) and form.monitor.name == "line"
    assert form.monitor_box.children == (form.monitor,) and form.error.value == ""
    assert "line" in form.monitor.status.value and "deploying" in form.monitor.status.value
    form = deployment_form(client, source="model", model=" models/ten ", name="ten")
    form.deploy()  # inside an instance the SDK puts in this one's volume
    assert created(client)[4] == {"replicas": 1, "model": "models/ten", "volume": None}
    outside = DeploymentForm(client=client, every=None, volume="lab")
    outside.source.value, outside.model.value, outside.name.value = "model", "m", "m"
    outside.deploy()
    assert created(client)[4] == {"replicas": 1, "model": "m", "volume": "lab"}


def test_the_deployment_form_checks_before_sending_and_shows_refusals(client):
    form = deployment_form(client, name="x")
    assert form.deploy() is None  # no completed job: the directory is asked for
    assert (
        form.error.value
        == '<span style="color: #c62828">Model directory: give the model&#x27;s directory</span>'
    )
    form.source.value = "job"
    form.deploy()
    assert "Training job: you have no completed training job" in form.error.value
    form = deployment_form(client, source="model", model="m", name="  ")
    form.deploy()
    assert "Name: give the deployment a name" in form.error.value
    assert not [c for c in client.calls if c[0] == "create_deployment"]
    completed(client, "x")
    client.refuse = AtelierError(
        400, "invalid", "you have no completed training job named 'x'", "job"
    )
    form = deployment_form(client, name="d")
    assert form.deploy() is None and form.monitor is None and not form.deploy_button.disabled
    assert form.error.value == (
        '<span style="color: #c62828">Training job: you have no completed training job named '
        "&#x27;x&#x27;</span>"
    )
    client.refuse = ConnectionRefusedError(111, "Connection refused")
    form.deploy()
    assert "ConnectionRefusedError" in form.error.value


def test_the_deployment_form_shows_what_could_not_be_read_and_keeps_the_rest(client):
    def refuse(owner=None):
        raise AtelierError(403, "forbidden", "no <jobs> scope")

    client.jobs = refuse
    form = DeploymentForm(client=client, every=None)
    assert "no &lt;jobs&gt; scope" in form.error.value
    assert len(form.image.options) == 3 and form.source.value == "model"


def test_deployment_monitor_shows_status_endpoint_replicas_metrics_and_events(client):
    client.create_deployment("line", image="i", spec="s", replicas=2)
    client.deployed["line"].update(
        status="running", serving_version=1,
        replicas_now=[{"number": 1, "version": 1, "phase": "ready"},
                      {"number": 2, "version": 1, "phase": "starting"}],
        metrics={"requests": 12, "errors": 1, "latency_ms": {"p50": 3.25, "p99": 10.0}},
    )  # fmt: skip
    client.deployment_log["line"].append(
        {"time": "2026-12-02T06:11:00+00:00", "message": "version 1 serves every request"}
    )
    monitor = DeploymentMonitor("line", client=client, every=None)
    assert monitor.status.value == (
        '<b>line</b> <span style="color: #2e7d32; font-weight: bold">running</span>'
        " · version 1 serving"
    )
    details = monitor.details.value
    assert "<code>http://127.0.0.1:8000/deployments/alice/line</code>" in details
    assert "…/v2/models/line/infer" in details
    assert "2 asked, 2 live: #1 ready (version 1), #2 starting (version 1)" in details
    assert "12 (1 errors) · latency p50 3.2 ms, p99 10.0 ms" in details
    assert "version 1 serves every request" in monitor.events.value
    assert (
        monitor.key_button.description == "Create key" and monitor.send_button.description == "Send"
    )


def test_deployment_monitor_escapes_and_says_where_the_hubs_address_is_unknown(client):
    client.create_deployment("d", image="i", spec="s")
    client.deployed["d"].update(status="failed", reason="<b>version 1</b> failed")
    client.deployment_log["d"] = [{"time": "t", "message": "<script>x</script>"}]

    def unknown(hub_url=None):
        raise AtelierError(0, "no_url", "pass hub_url= or set ATELIER_HUB_URL", "hub_url")

    client.hub_address = unknown
    monitor = DeploymentMonitor("d", client=client, every=None)
    shown = monitor.status.value + monitor.events.value
    assert "<b>version" not in shown and "<script>" not in shown
    assert "(&lt;b&gt;version 1&lt;/b&gt; failed) · version 1, none serving" in monitor.status.value
    assert (
        "/deployments/alice/d on the hub&#x27;s address (pass hub_url= or set ATELIER_HUB_URL)"
        in monitor.details.value
    )


def test_create_key_shows_the_new_key_once_and_send_uses_it(client):
    client.create_deployment("line", image="i", spec="s")
    monitor = DeploymentMonitor("line", client=client, every=None)
    assert monitor.new_key.value == "" and monitor.key.value == ""
    monitor.key_button.click()
    key = f"ak_{1:012x}.{'s' * 43}"
    assert ("create_app_key", "line", None) in client.calls
    assert f"<code>{key}</code>" in monitor.new_key.value
    assert "shown this once" in monitor.new_key.value
    assert monitor.key.value == key and not monitor.key_button.disabled
    monitor.refresh()
    assert key in monitor.new_key.value  # a refresh leaves it to copy
    assert key not in monitor.status.value + monitor.details.value + monitor.events.value
    monitor.create_key()
    assert key not in monitor.new_key.value and monitor.key.value.startswith(f"ak_{2:012x}.")

    def refuse(name, owner=None):
        raise AtelierError(409, "quota_exceeded", "at most 10 app keys")

    client.create_app_key = refuse
    assert monitor.create_key() is None
    assert monitor.new_key.value == '<span style="color: #c62828">at most 10 app keys</span>'


def test_send_asks_the_model_with_the_parsed_inputs_and_shows_the_answer(client):
    client.create_deployment("line", image="i", spec="s")
    monitor = DeploymentMonitor("line", client=client, every=None)
    monitor.create_key()
    monitor.inputs.value = "1.0, 2.0"
    monitor.send_button.click()
    assert client.calls[-2] == ("predict", "line", {"x": [[1.0], [2.0]]}, monitor.key.value, None)
    assert monitor.answer.value.startswith("<b>Answer</b>")
    assert "<b>y</b> FP32 [2, 1]: <code>5, 8</code>" in monitor.answer.value
    assert "1 (0 errors)" in monitor.details.value  # refreshed: its request counted
    tensors = [{"name": "a", "shape": [1], "datatype": "INT64", "data": [3]}]
    monitor.inputs.value = json.dumps(tensors)
    monitor.input_name.value = "ignored"
    monitor.send()
    assert client.calls[-2][2] == tensors and not monitor.send_button.disabled


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (AtelierError(401, "unauthorized", "no such app key"), "no such app key"),
        (AtelierError(0, "invalid", "a ragged list", "x"), "x: a ragged list"),
        (AtelierError(504, "gateway_timeout", "no answer within 60 s"), "no answer within 60 s"),
        (ConnectionRefusedError(111, "Connection refused"), "ConnectionRefusedError: [Errno 111]"),
    ],
)
def test_a_refused_or_failed_request_is_shown_not_raised(client, error, shown):
    client.create_deployment("line", image="i", spec="s")
    monitor = DeploymentMonitor("line", client=client, every=None)
    monitor.key.value, monitor.inputs.value = "ak_000000000000.k", "1"
    client.answer_error = error
    assert monitor.send() is None
    assert shown in monitor.answer.value and "#c62828" in monitor.answer.value
    assert not monitor.send_button.disabled


def test_send_checks_the_key_and_the_inputs_before_asking(client):
    client.create_deployment("line", image="i", spec="s")
    monitor = DeploymentMonitor("line", client=client, every=None)
    monitor.inputs.value = "1.0"
    monitor.send()
    assert "App key: create a key first, or paste one" in monitor.answer.value
    monitor.key.value, monitor.inputs.value = "k", "1.0, two"
    monitor.send()
    assert (
        "Inputs: write numbers such as 1.0, 2.0, or JSON; got &#x27;1.0, two&#x27;"
        in monitor.answer.value
    )
    assert not [c for c in client.calls if c[0] == "predict"]


def test_the_monitor_follows_quickly_while_it_deploys_slowly_after_and_stops_when_closed(client):
    client.create_deployment("line", image="i", spec="s")
    monitor = DeploymentMonitor("line", client=client, every=0.01)
    client.deployed["line"].update(status="running", serving_version=1)
    wait_for(lambda: "running" in monitor.status.value)
    polls = client.calls.count(("deployment", "line", None))
    time.sleep(0.1)  # QUIET times 0.01 s between polls once it runs
    assert client.calls.count(("deployment", "line", None)) <= polls + 1
    monitor.close()
    wait_for(lambda: monitor._thread is None)
    polls = client.calls.count(("deployment", "line", None))
    time.sleep(0.2)
    assert client.calls.count(("deployment", "line", None)) == polls


def test_the_monitor_stops_following_a_deleted_deployment(client):
    client.create_deployment("line", image="i", spec="s")
    monitor = DeploymentMonitor("line", client=client, every=0.01)
    del client.deployed["line"]
    wait_for(lambda: monitor._thread is None)
    assert monitor.gone and "no deployment alice/line" in monitor.error.value
    absent = DeploymentMonitor("nothing", client=client, every=0.01)
    assert absent.gone and absent._thread is None


def test_a_new_deployment_closes_the_monitor_before_and_closing_the_form_closes_its_own(client):
    form = deployment_form(client, source="model", model="m", name="a")
    form.deploy()
    first = form.monitor
    form.name.value = "b"
    form.deploy()
    assert first._halt.is_set() and form.monitor.name == "b"
    form.close()
    assert form.monitor._halt.is_set()


# rendering


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("", {}),
        ("\n  \n# only a comment\n", {}),
        ("lr=0.01", {"lr": 0.01}),
        ("  epochs = 10  ", {"epochs": 10}),
        ("steps=-3\nscale=+2", {"steps": -3, "scale": 2}),
        ("lr=1e-3\nwd=5E+2\nx=.5\ny=3.", {"lr": 0.001, "wd": 500.0, "x": 0.5, "y": 3.0}),
        ("optimizer=adam", {"optimizer": "adam"}),
        ("amp=true", {"amp": "true"}),  # booleans are the script's to read
        ("n='10'\nm=\"2.5\"", {"n": "10", "m": "2.5"}),  # quoted: kept as text
        ('q="', {"q": '"'}),
        ("x=nan\ny=inf\nz=1_000\nv=0x10", {"x": "nan", "y": "inf", "z": "1_000", "v": "0x10"}),
        ("expr=a=b", {"expr": "a=b"}),  # the first = splits
        ("_private=1\nCamel2=2", {"_private": 1, "Camel2": 2}),
        ("big=123456789012345678901234567890", {"big": 123456789012345678901234567890}),
        ("lr=0.1\r\nbatch=32\r\n", {"lr": 0.1, "batch": 32}),
        ("x=<script>", {"x": "<script>"}),
    ],
)
def test_parse_hyperparameters(text, parsed):
    result = parse_hyperparameters(text)
    assert result == parsed
    assert [type(v) for v in result.values()] == [type(v) for v in parsed.values()]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("lr", "line 1: write key=value, got 'lr'"),
        ("a=1\n\nlr 0.1", "line 3: write key=value, got 'lr 0.1'"),
        ("=1", "line 1: '' is not a name"),
        ("2x=1", "line 1: '2x' is not a name"),
        ("1lr=1", "line 1: '1lr' is not a name"),
        ("a b=1", "line 1: 'a b' is not a name"),
        ("--lr=1", "line 1: '--lr' is not a name"),
        ("x" * 129 + "=1", "is not a name"),
        ("lr=1\nlr=2", "line 2: lr is given twice"),
        ("lr=", "line 1: lr has no value; write lr=<value>"),
        ("lr=   ", "line 1: lr has no value"),
    ],
)
def test_parse_hyperparameters_refuses(text, message):
    with pytest.raises(ValueError, match=None) as refused:
        parse_hyperparameters(text)
    assert message in str(refused.value)


def test_scale_and_polyline_points():
    assert scale(5, 0, 10, 100, 200) == 200
    assert scale(3, 3, 3, 10, 20) == 20  # one value: the middle
    box = (10, 20, 100, 50)  # left, top, width, height
    points = [(0, 0.0), (5, 1.0), (10, 0.5)]
    assert polyline_points(points, (0, 10), (0.0, 1.0), box) == "10.0,70.0 60.0,20.0 110.0,45.0"
    flat = [(1, 2.0), (2, 2.0)]
    assert polyline_points(flat, (1, 2), (2.0, 2.0), box) == "10.0,45.0 110.0,45.0"
    assert polyline_points([(7, 1.0)], (7, 7), (1.0, 1.0), box) == "60.0,45.0"
    assert polyline_points([], (0, 1), (0, 1), box) == ""


def test_clean_points_keeps_finite_numbers_by_step():
    raw = [[3, 0.1], [1, 0.3], [2, float("nan")], [4, float("inf")], [5, None], ["6", 1.0]]
    raw += [[7, True], [8], "x", [9, 2, 3], (10, 0.2)]
    assert clean_points(raw) == [(1, 0.3), (3, 0.1), (10, 0.2)]
    many = [[step, float(step)] for step in range(MOST_POINTS * 3 + 1)]
    kept = clean_points(many)
    assert len(kept) <= MOST_POINTS + 1 and kept[0] == (0, 0.0) and kept[-1] == (3000, 3000.0)
    odd = [[step, 1.0] for step in range(MOST_POINTS * 2 + 2)]  # the last not on the stride
    assert clean_points(odd)[-1] == (MOST_POINTS * 2 + 1, 1.0)


def test_metric_chart_draws_the_series_with_its_ranges():
    svg = metric_chart("loss", [[0, 2.0], [50, 1.0], [100, 0.5]], width=360, height=160)
    assert svg.startswith('<svg xmlns="http://www.w3.org/2000/svg" width="360" height="160"')
    # plot box: left 56, top 20, width 296, height 122
    assert 'points="56.0,142.0 204.0,60.7 352.0,20.0"' not in svg  # values go down: not up
    assert 'points="56.0,20.0 204.0,101.3 352.0,142.0"' in svg
    assert ">loss 0.5 (step 100)</text>" in svg
    assert ">2</text>" in svg and ">0.5</text>" in svg  # the value range
    assert ">0</text>" in svg and ">100</text>" in svg  # the step range
    assert "<circle" not in svg


def test_metric_chart_of_one_point_marks_it_and_of_none_says_so():
    svg = metric_chart("acc", [[3, 0.25]])
    assert '<circle cx="204.0" cy="81.0"' in svg and 'points="204.0,81.0"' in svg
    assert metric_chart("acc", []) == "<div><b>acc</b> <i>no values yet</i></div>"
    assert metric_chart("<x>", [[1, float("nan")]]) == (
        "<div><b>&lt;x&gt;</b> <i>no values yet</i></div>"
    )


def test_metrics_html_puts_loss_first_and_gives_each_series_a_colour():
    html = metrics_html({"b": [[1, 1]], "loss": [[1, 1]], "a": [[1, 1]]})
    assert html.index(">loss ") < html.index(">a ") < html.index(">b ")
    assert html.count("<svg") == 3 and 'stroke="#1565c0"' in html and 'stroke="#c62828"' in html
    assert metrics_html({}) == "<i>no metrics yet</i>"
    many = metrics_html({f"s{i}": [[1, i]] for i in range(10)})
    assert many.count("<svg") == 6


def test_status_html():
    assert status_html({"name": "j", "status": "completed"}) == (
        '<b>j</b> <span style="color: #2e7d32; font-weight: bold">completed</span>'
    )
    html = status_html({"name": "j", "status": "weird", "reason": "a & b", "world_size": 1})
    assert "#000000" in html and "(a &amp; b)" in html and "· 1 processes" in html


def test_events_html_shows_the_newest_oldest_first():
    events = [{"time": f"2026-01-01T00:00:{i:02d}+00:00", "message": f"e{i}"} for i in range(20)]
    html = events_html(events, most=3)
    assert html.count("<li>") == 3 and html.index("e17") < html.index("e19")
    assert "e16" not in html
    assert events_html([]) == "<i>no events yet</i>"
    assert "&lt;b&gt;" in events_html([{"time": None, "message": "<b>"}])


def test_short_time():
    assert short_time("2026-12-02T06:10:04.851286+00:00") == "2026-12-02 06:10:04"
    assert short_time("yesterday") == "yesterday"
    assert short_time(None) == "" and short_time("") == ""


def test_readable_log_and_log_html():
    text = "\x1b[31mred\x1b[0m\n10%\r50%\r100%\n[rank0]:\x1eatelier-metrics {}\nend\r\n"
    assert readable_log(text) == "red\n100%\nend"
    assert log_html("").endswith("<i>no output yet</i></pre>")
    assert "a &amp; &lt;b&gt;" in log_html("a & <b>")


def test_usage_text():
    assert usage_text({"cpu_seconds": 3.25, "memory_bytes": 2**31}) == "CPU 3.2 s · memory 2.00 GiB"
    assert usage_text({"gpu_util": 0.5, "bad": "x", "nan": float("nan")}) == "gpu_util 0.5"
    assert usage_text({}) == ""


def test_jobs_table_html():
    html = jobs_table_html(
        [{"name": "j", "status": "running", "image": "im", "spec": "sp", "world_size": 4,
          "created": "2026-12-02T06:10:04+00:00"}]
    )  # fmt: skip
    assert html.count("<tr>") == 2 and "<th" in html and "2026-12-02 06:10:04" in html
    assert '<td style="padding: 2px 8px">4</td>' in html
    assert jobs_table_html([]) == "<i>no training jobs yet</i>"


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("1.0, 2.0", {"x": [[1.0], [2.0]]}),
        (" 1 2\n3;4 ", {"x": [[1.0], [2.0], [3.0], [4.0]]}),  # floats: FP32
        ("-1e-3", {"x": [[-0.001]]}),
        ("[[1, 2], [3, 4]]", {"x": [[1, 2], [3, 4]]}),  # JSON: as written, its shape
        ('{"a": [1.5], "b": 2}', {"a": [1.5], "b": 2}),
        ('[{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]',
         [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]),
        ('{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}',
         [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]),
        ("[]", {"x": []}),
    ],
)  # fmt: skip
def test_parse_inputs(text, parsed):
    assert parse_inputs(text) == parsed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "give input values"),
        ("  \n", "give input values"),
        ("1, x", "write numbers such as 1.0, 2.0, or JSON; got '1, x'"),
        ("1, nan", "finite"),
        ("[1, 2", "not JSON"),
    ],
)
def test_parse_inputs_refuses(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_inputs(text)


def test_parse_inputs_names_the_input():
    assert parse_inputs("3", name="features") == {"features": [[3.0]]}


def test_deployment_status_html():
    def line(**fields):
        return deployment_status_html({"name": "d", "version": 2, **fields})

    assert line(status="deploying", serving_version=None).endswith("· version 2, none serving")
    assert line(status="upgrading", serving_version=1).endswith("· version 2, version 1 serving")
    assert "#8a6d00" in line(status="upgrading", serving_version=1)
    assert "#616161" in line(status="stopped", serving_version=None)
    assert "#000000" in line(status="?", reason="a & b") and "(a &amp; b)" in line(reason="a & b")


def test_deployment_details_html():
    html = deployment_details_html({"name": "<d>", "replicas": 1}, "http://h/deployments/a/<d>")
    assert "<code>http://h/deployments/a/&lt;d&gt;</code>" in html and "<d>" not in html
    assert "1 asked, 0 live</td>" in html and "0 (0 errors)</td>" in html  # no metrics yet
    latency = {"p50": None, "p99": float("nan")}
    html = deployment_details_html({"metrics": {"requests": 3, "latency_ms": latency}}, "")
    assert "3 (0 errors)</td>" in html and "latency" not in html


def test_answer_html():
    answer = {"outputs": [
        {"name": "y", "shape": [2, 1], "datatype": "FP32", "data": [[4.999871], [8.000123]]},
        {"name": "<z>", "datatype": "BOOL", "shape": [1], "data": [True]},
    ]}  # fmt: skip
    html = answer_html(answer)
    assert "<li><b>y</b> FP32 [2, 1]: <code>4.99987, 8.00012</code></li>" in html
    assert "<b>&lt;z&gt;</b> BOOL [1]: <code>True</code>" in html
    assert "… (30 values)" in answer_html({"outputs": [{"name": "y", "data": list(range(30))}]})
    assert answer_html({"outputs": []}) == "<i>no outputs</i>"
    assert (
        answer_html({"error": "<b>"})
        == "<pre>{\n &quot;error&quot;: &quot;&lt;b&gt;&quot;\n}</pre>"
    )


def test_fits_and_default_image():
    assert fits({"flavor": "cpu"}, {"flavor": "cpu"})
    assert not fits({"flavor": "cpu"}, {"flavor": "gpu"})
    assert not fits({"flavor": "cpu"}, {"flavor": "cpu", "disabled": True})
    assert fits({}, {"flavor": "gpu"}) and fits({"flavor": "gpu"}, {})
    assert not fits({"accelerator_types": ["a100"]}, {"accelerator_type": "v100"})
    assert default_image([], []) is None
    assert default_image([{"name": "a"}, {"name": "pytorch_x"}], []) == "pytorch_x"
