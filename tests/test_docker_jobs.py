"""Training jobs on the Docker backend, as plans (no engine, no accelerator here): each node's
`docker run` (confined as instance containers are, only its own devices, named and labelled
for its job, attempt and node, rendezvous at node 0), what its container's environment and the
client's are, and the seat's engine calls against a recording fake engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from atelier.spawner import core
from atelier.spawner.backend import Backend, JobRun
from atelier.spawner.devices import Device
from atelier.spawner.docker import jobs as docker_jobs
from atelier.spawner.docker.backend import DockerBackend
from atelier.spawner.docker.jobs import DockerJobs

CPU_IMAGE = "pytorch_2.13.0-cpu-py_3.11-debian_12-x86_64"
GPU_IMAGE = "pytorch_2.4.0-cuda_12.4-py_3.11-ubuntu_22.04-x86_64"
NPU_IMAGE = "pytorch_2.1.0-cann_8.0.rc1-py_3.9-euleros_2.10-aarch64"
ID = "0123456789abcdef0123456789abcdef"
VOLUME = "/srv/mounts/atelier-ann/lab"
IMAGE_REF = "sha256:" + "ab" * 32


def job_run(image=CPU_IMAGE, spec="cpu.2u8g", nodes=2, devices=(), attempt=1, **fields):
    plan = core.JobPlan(
        owner="ann",
        name="ddp",
        image=core.Image(image),
        spec=core.Spec(spec),
        volume="lab",
        argv=("train.py", "--steps=5"),
        python=True,
        nodes=nodes,
        output="jobs/ddp",
        **fields,
    )
    return JobRun(ID, plan, attempt, Path("/var/lib/atelier/jobs") / ID, tuple(devices))


def argv_of(run: JobRun, node: int) -> list[str]:
    return docker_jobs.docker_run_argv(
        run,
        node,
        volume=VOLUME,
        image=IMAGE_REF,
        hub="h1",
        env_file=f"/var/lib/atelier/jobs/{ID}/attempt-1/node-{node}.env",
        pids_limit=512,
    )


def options(argv: list[str]) -> list[str]:
    """The client's options: what comes before the image."""
    return argv[: argv.index(IMAGE_REF)]


def test_each_node_is_a_confined_non_root_container_with_the_specs_limits():
    argv = argv_of(job_run(), 1)
    assert argv[:3] == ["/usr/bin/docker", "run", "--rm"]
    flags = options(argv)
    for flag in (
        "--user=1000:1000",
        "--security-opt=no-new-privileges",
        "--cap-drop=ALL",
        "--pids-limit=512",
        f"--memory={8 * 1024**3}",
        "--cpus=2",
        "--init",
        "--pull=never",
        "--log-driver=none",
        f"--mount=type=bind,source={VOLUME},target=/home/jovyan/work",
        "--workdir=/home/jovyan/work",
        f"--env-file=/var/lib/atelier/jobs/{ID}/attempt-1/node-1.env",
    ):
        assert flag in flags, flag
    assert not [f for f in flags if f.startswith(("--privileged", "--cap-add", "--security-opt=s"))]
    assert not [f for f in flags if f.startswith(("--gpus", "--device", "-e", "--env="))]
    assert not [f for f in flags if "host" in f.split("=", 1)[-1]]  # never the host's network


def test_nodes_are_named_and_labelled_for_their_job_attempt_and_node():
    run = job_run(attempt=3)
    name = f"atelier-job-{ID}-a3-n1"
    flags = options(argv_of(run, 1))
    assert f"--name={name}" in flags and f"--hostname={name}" in flags
    assert len(name) <= 63  # a host name
    assert f"--network=atelier-job-{ID}" in flags
    labels = dict(f.removeprefix("--label=").split("=", 1) for f in flags if "--label=" in f)
    assert labels == {
        "atelier.hub": "h1",
        "atelier.owner": "ann",
        "atelier.job": ID,
        "atelier.job.attempt": "3",
        "atelier.job.node": "1",
    }
    assert "atelier.instance" not in labels  # never taken for an instance's container
    names = {docker_jobs.node_name(ID, a, n) for a in (1, 2, 11) for n in (0, 1, 2, 12)}
    assert len(names) == 12


def test_the_image_runs_torchrun_with_node_0_as_the_rendezvous():
    run = job_run()
    for node in (0, 1):
        argv = argv_of(run, node)
        command = argv[argv.index(IMAGE_REF) + 1 :]
        assert command[0] == "torchrun"  # on the image's PATH
        assert f"--rdzv-endpoint=atelier-job-{ID}-a1-n0:29400" in command
        assert f"--rdzv-conf=is_host={int(node == 0)}" in command
        assert f"--rdzv-id={ID}" in command and "--log-dir=/tmp/torchrun" in command
        assert command[-2:] == ["train.py", "--steps=5"]


def test_gpus_are_only_the_nodes_own_share():
    held = [Device("gpu", "a100", i) for i in (4, 5, 6, 7)]
    run = job_run(GPU_IMAGE, "gpu.2xa100.8u64g", devices=held)
    first, second = options(argv_of(run, 0)), options(argv_of(run, 1))
    assert [f for f in first if f.startswith(("--gpus", "--device"))] == ['--gpus="device=4,5"']
    assert [f for f in second if f.startswith(("--gpus", "--device"))] == ['--gpus="device=6,7"']
    environment = docker_jobs.node_environment(run, 1)
    assert environment["CUDA_VISIBLE_DEVICES"] == "0,1"  # the runtime shows them as 0..n-1
    one = job_run(GPU_IMAGE, "gpu.1xa100.8u64g", devices=held[:2])
    assert "--gpus=device=5" in options(argv_of(one, 1))


def test_npus_are_the_nodes_davinci_nodes_and_the_managers():
    held = [Device("ascend", "910b", i) for i in (0, 1, 2, 3)]
    run = job_run(NPU_IMAGE, "ascend.2x910b.24u192g", devices=held)
    devices = [f for f in options(argv_of(run, 1)) if f.startswith(("--gpus", "--device"))]
    assert devices == [
        "--device=/dev/davinci2:/dev/davinci2:rwm",
        "--device=/dev/davinci3:/dev/davinci3:rwm",
        "--device=/dev/davinci_manager:/dev/davinci_manager:rwm",
        "--device=/dev/devmm_svm:/dev/devmm_svm:rwm",
        "--device=/dev/hisi_hdc:/dev/hisi_hdc:rwm",
    ]
    assert docker_jobs.node_environment(run, 1)["ASCEND_VISIBLE_DEVICES"] == "2,3"


def test_the_containers_environment_is_in_its_file_never_on_the_command_line():
    run = job_run(environment={"WANDB_API_KEY": "s3cret", "DOCKER_CONFIG": "/srv/mounts/x"})
    environment = docker_jobs.node_environment(run, 0)
    assert environment["ATELIER_OUTPUT_DIR"] == "/home/jovyan/work/jobs/ddp"
    assert environment["ATELIER_JOB"] == "ddp" and environment["ATELIER_JOB_ATTEMPT"] == "1"
    assert environment["TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE"] == "[rank${rank}]:"
    assert environment["HOME"] == "/home/jovyan" and environment["PATH"].startswith("/opt/env/bin")
    text = docker_jobs.env_file_text(environment)
    assert "WANDB_API_KEY=s3cret\n" in text and "DOCKER_CONFIG=/srv/mounts/x\n" in text
    assert not any("s3cret" in part for part in argv_of(run, 0))
    client = docker_jobs.client_environment({"DOCKER_HOST": "unix:///run/d.sock", "SECRET": "x"})
    assert client == {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "DOCKER_HOST": "unix:///run/d.sock",
    }
    assert "DOCKER_HOST" not in docker_jobs.client_environment({})  # the default socket


@pytest.mark.parametrize("value", ["a\nb", "a\r", "\nWORLD_SIZE=1"])
def test_a_value_with_a_line_break_is_refused(value):
    with pytest.raises(core.OptionsError) as refused:
        docker_jobs.env_file_text({"NOTE": value})
    assert refused.value.field == "environment"


def test_a_volume_path_with_a_comma_stays_one_field():
    argv = docker_jobs.docker_run_argv(
        job_run(), 0, volume="/srv/a,b", image=IMAGE_REF, hub="h", env_file="/e", pids_limit=64
    )
    assert '--mount=type=bind,"source=/srv/a,b",target=/home/jovyan/work' in argv


# the seat, against a fake engine ----------------------------------------------------------------


class FakeAPI:
    def __init__(self, listed=(), networks=()):
        self.listed, self.nets, self.calls = list(listed), list(networks), []

    def containers(self, all, filters):
        self.calls.append(("containers", sorted(filters["label"])))
        return list(self.listed)

    def kill(self, id, signal):
        self.calls.append(("kill", id, signal))
        for found in self.listed:
            found["State"] = "exited" if found["Id"] == id else found["State"]

    def remove_container(self, id, force):
        self.calls.append(("remove", id))
        self.listed = [c for c in self.listed if c["Id"] != id]

    def networks(self, names):
        return [n for n in self.nets if names[0] in n["Name"]]

    def create_network(self, name, driver, internal, labels):
        self.calls.append(("create_network", name, driver, internal, labels))
        self.nets.append({"Name": name, "Id": "n1", "Labels": labels})

    def inspect_container(self, name):
        self.calls.append(("inspect", name))
        return {"State": {"Running": True}}

    def remove_network(self, id):
        self.calls.append(("remove_network", id))
        self.nets = [n for n in self.nets if n["Id"] != id]


class Seat(DockerJobs, Backend):
    """The Docker job seat on a fake engine (the backend's containers_labelled, its hub)."""

    name = "fake"
    hub_id = "h1"
    containers_labelled = DockerBackend.containers_labelled
    capabilities = configure_hub = prepare = realised_images = has_definition = None
    definition_hint = build_image = volume_used_bytes = expand_volume = None
    connect_ssh = forget_user = None

    def __init__(self, api, volume=Path(VOLUME)):
        self.engine = type("Engine", (), {"api": api})()
        self.options = type("Options", (), {"pids_limit": 512})()
        self.mounted = volume

    def image_to_run(self, image):
        return IMAGE_REF

    def volume(self, owner, instance):
        seat = self

        class Volume:
            def mounted(self, ids, traversable):
                assert (owner, instance, ids, traversable) == ("ann", "lab", (1000, 1000), False)
                if seat.mounted is None:
                    raise core.VolumeUnavailable("the work volume is missing on this machine")
                return seat.mounted

        return Volume()


def test_a_stop_stops_and_removes_the_attempts_containers_and_the_jobs_network(tmp_path):
    run = JobRun(ID, job_run().plan, 2, tmp_path)
    network = {"Name": f"atelier-job-{ID}", "Id": "n1", "Labels": {"atelier.hub": "h1"}}
    network["Labels"]["atelier.job"] = ID
    other = {"Name": f"atelier-job-{ID}x", "Id": "n2", "Labels": {}}
    listed = [{"Id": "c0", "State": "running"}, {"Id": "c1", "State": "running"}]
    api = FakeAPI([*listed, {"Id": "c2", "State": "created"}], [other, network])
    Seat(api).stop_job(run)
    wanted = sorted(["atelier.hub=h1", f"atelier.job={ID}", "atelier.job.attempt=2"])
    assert api.calls == [
        ("containers", wanted),
        ("kill", "c0", "SIGTERM"),  # every node at once
        ("kill", "c1", "SIGTERM"),
        ("containers", wanted),  # until none runs, or the grace period passed
        ("containers", wanted),
        ("remove", "c0"),
        ("remove", "c1"),
        ("remove", "c2"),
        ("containers", wanted),  # after the monitors ended: what a cut-off start left
        ("containers", wanted),
        ("remove_network", "n1"),
    ]
    assert api.nets == [other]


def test_the_jobs_network_is_internal_made_once_and_never_anothers(tmp_path):
    run = JobRun(ID, job_run().plan, 1, tmp_path)
    api = FakeAPI()
    seat = Seat(api)
    seat._job_network(run)
    seat._job_network(run)  # a later attempt's start while it is still there
    labels = {"atelier.hub": "h1", "atelier.job": ID}
    assert api.calls == [("create_network", f"atelier-job-{ID}", "bridge", True, labels)]
    squatted = FakeAPI(networks=[{"Name": f"atelier-job-{ID}", "Id": "x", "Labels": {}}])
    with pytest.raises(RuntimeError, match="did not make"):
        Seat(squatted)._job_network(run)


def test_strays_are_instances_only_never_a_jobs_nodes():
    backend = object.__new__(DockerBackend)
    node = {"atelier.hub": "h1", "atelier.owner": "ann", "atelier.job": ID}
    instance = {"atelier.hub": "h1", "atelier.owner": "ann", "atelier.instance": "gone"}
    backend.containers_labelled = lambda: [
        {"Labels": node, "Names": [f"/atelier-job-{ID}-a1-n0"]},
        {"Labels": instance, "Names": ["/atelier-ann--gone"]},
    ]
    assert backend.strays(set()) == ["atelier-ann--gone (ann/gone)"]


@pytest.fixture
def launched(monkeypatch):
    """The launches start_job hands the node monitors, which do not start."""
    found = []

    def start(directory, attempt, node, launch):
        found.append((node, launch))
        state = directory / f"attempt-{attempt}" / f"node-{node}.state"
        state.write_text(json.dumps({"monitor": 1, "monitor_started": -1}))  # not running

    monkeypatch.setattr(docker_jobs.jobnode, "start", start)
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/engine.sock")
    return found


def test_a_start_runs_each_node_as_roots_client_of_the_backends_engine(tmp_path, launched):
    run = JobRun(ID, job_run(environment={"TOKEN": "s3cret"}).plan, 1, tmp_path)
    api = FakeAPI()
    Seat(api).start_job(run)
    assert [node for node, _ in launched] == [0, 1]
    for node, launch in launched:
        assert launch["argv"] == docker_jobs.docker_run_argv(
            run,
            node,
            volume=VOLUME,
            image=IMAGE_REF,
            hub="h1",
            env_file=str(tmp_path / "attempt-1" / f"node-{node}.env"),
            pids_limit=512,
        )
        assert launch["env"]["DOCKER_HOST"] == "unix:///run/engine.sock"
        assert (launch["account"], launch["cgroups"], launch["confine"]) == (None, [], False)
        env_file = tmp_path / "attempt-1" / f"node-{node}.env"
        assert env_file.stat().st_mode & 0o777 == 0o600
        assert "TOKEN=s3cret\n" in env_file.read_text()
    assert ("create_network", f"atelier-job-{ID}", "bridge", True) == api.calls[1][:4]
    assert ("inspect", f"atelier-job-{ID}-a1-n0") in api.calls  # node 0 first, then the rest


def test_a_missing_volume_or_a_line_break_refuses_the_start_before_any_node(tmp_path, launched):
    run = JobRun(ID, job_run().plan, 1, tmp_path)
    with pytest.raises(core.OptionsError) as refused:
        Seat(FakeAPI(), volume=None).start_job(run)
    assert refused.value.field == "volume" and "missing" in refused.value.message
    broken = JobRun(ID, job_run(environment={"NOTE": "a\nb"}).plan, 1, tmp_path)
    with pytest.raises(core.OptionsError):
        Seat(FakeAPI()).start_job(broken)
    assert launched == []


def test_a_start_cut_off_before_is_stopped_first(tmp_path, launched):
    run = JobRun(ID, job_run(nodes=1).plan, 4, tmp_path)
    api = FakeAPI([{"Id": "old", "State": "running"}])
    Seat(api).start_job(run)
    assert api.calls.index(("remove", "old")) < [c[0] for c in api.calls].index("create_network")
    assert len(launched) == 1
