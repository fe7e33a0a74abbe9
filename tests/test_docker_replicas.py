"""Deployments on the Docker backend, as plans (no engine here): each replica's `docker run`
(confined as a job's node is, with no network, the volume and its socket directory mounted,
the model server binding its socket there), the seat's start and stop against a recording
fake engine, and the router's way to a replica's socket, which follows no link a container's
user puts in its place."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from aiohttp import web
from test_docker_jobs import IMAGE_REF, VOLUME, FakeAPI, Seat, options

from atelier.hub.router import upstream
from atelier.spawner import core
from atelier.spawner.backend import ReplicaRun
from atelier.spawner.docker import replicas as docker_replicas
from atelier.spawner.docker.backend import DockerBackend

ID = "fedcba9876543210fedcba9876543210"
SOCKETS = "/srv/shared/serving/replicas/" + ID + "-3"


def replica_run(directory=Path("/var/lib/atelier/deployments"), **fields) -> ReplicaRun:
    plan = core.DeploymentPlan(
        "ann", "line", core.Image("pytorch_2.13.0-cpu-py_3.11-debian_12-x86_64"),
        core.Spec("cpu.2u8g"), "lab", "models/line", timeout_seconds=30, **fields,
    )  # fmt: skip
    return ReplicaRun(ID, plan, version=2, number=3, directory=directory)


def argv_of(run: ReplicaRun) -> list[str]:
    return docker_replicas.replica_argv(
        run, volume=VOLUME, socket_dir=SOCKETS, image=IMAGE_REF, hub="h1", env_file="/e",
        pids_limit=512,
    )  # fmt: skip


def test_a_replica_is_a_confined_container_with_no_network():
    argv = options(argv_of(replica_run()))
    assert "--network=none" in argv
    for option in ("--user=1000:1000", "--security-opt=no-new-privileges", "--cap-drop=ALL"):
        assert option in argv
    assert {"--pids-limit=512", "--cpus=2", f"--memory={8 * 1024**3}"} <= set(argv)
    assert "--init" in argv and "--pull=never" in argv and "--rm" in argv
    assert "--stop-timeout=40" in argv  # its timeout, then jobnode's grace: drained, then killed
    assert f"--name=atelier-deploy-{ID}-r3" in argv
    assert not any(option.startswith(("--gpus", "--device", "-p", "--publish")) for option in argv)


def test_the_volume_and_the_socket_directory_are_its_only_mounts():
    argv = options(argv_of(replica_run()))
    mounts = [option for option in argv if option.startswith(("--mount", "-v", "--volume"))]
    assert mounts == [
        f"--mount=type=bind,source={VOLUME},target=/home/jovyan/work",
        f"--mount=type=bind,source={SOCKETS},target=/run/atelier-serving",
    ]


def test_its_server_serves_the_model_on_the_volume_binding_the_socket_there():
    argv = argv_of(replica_run())
    assert argv[argv.index(IMAGE_REF) + 1 :] == [
        "python", "-m", "atelier.serving", "/home/jovyan/work/models/line", "--name", "line",
        "--drain-seconds=30", "--socket=/run/atelier-serving/server.sock",
    ]  # fmt: skip


def test_it_is_labelled_for_its_deployment_and_number_and_its_owner():
    argv = options(argv_of(replica_run()))
    labels = {option for option in argv if option.startswith("--label=")}
    assert labels == {
        "--label=atelier.hub=h1",
        "--label=atelier.owner=ann",
        f"--label=atelier.deployment={ID}",
        "--label=atelier.replica=3",
    }


def test_strays_are_instances_only_never_a_replica():
    backend = object.__new__(DockerBackend)
    replica = {"atelier.hub": "h1", "atelier.owner": "ann", "atelier.deployment": ID}
    backend.containers_labelled = lambda: [{"Labels": replica, "Names": ["/atelier-deploy-x"]}]
    assert backend.strays(set()) == []


class ReplicaSeat(docker_replicas.DockerReplicas, Seat):
    shared_dir = None  # set per test


@pytest.fixture
def seat(tmp_path, monkeypatch):
    prepared, launched = [], []
    monkeypatch.setattr(docker_replicas.endpoint, "prepare", lambda *args: prepared.append(args))
    monkeypatch.setattr(
        docker_replicas.jobnode, "start", lambda *args: launched.append(args)
    )  # fmt: skip
    seat = ReplicaSeat(FakeAPI([{"Id": "old", "State": "running"}]))
    seat.shared_dir = tmp_path / "shared"
    return seat, prepared, launched


def test_a_start_removes_a_cut_off_starts_container_and_runs_roots_client(tmp_path, seat):
    seat, prepared, launched = seat
    run = replica_run(tmp_path / "deployments", environment={"TOKEN": "s3cret"})
    run.directory.mkdir()  # the service's
    endpoint = seat.start_replica(run)
    sockets = tmp_path / "shared" / "serving" / "replicas" / f"{ID}-3"
    assert endpoint == f"unix:{sockets}/server.sock"
    assert prepared == [(sockets, 1000, 1000)]  # the container user's tmpfs
    assert ("remove", "old") in seat.engine.api.calls
    ((directory, version, number, launch),) = launched
    assert (directory, version, number) == (run.directory, 2, 3)
    assert (launch["account"], launch["confine"], launch["ranks"]) == (None, False, 1)
    assert launch["grace_s"] == run.grace_s and "listen" not in launch
    env_file = Path(next(a for a in launch["argv"] if a.startswith("--env-file=")).split("=")[1])
    assert env_file.stat().st_mode & 0o777 == 0o600
    assert {"TOKEN=s3cret", "ATELIER_DEPLOYMENT=line", "HOME=/home/jovyan"} <= set(
        env_file.read_text().splitlines()
    )
    assert not any("s3cret" in word for word in launch["argv"])


def test_a_missing_volume_refuses_the_start_naming_the_volume(tmp_path, seat):
    seat, prepared, launched = seat
    seat.mounted = None
    with pytest.raises(core.OptionsError) as refused:
        seat.start_replica(replica_run(tmp_path))
    assert refused.value.field == "volume" and (prepared, launched) == ([], [])


# the router's way to a replica's socket ---------------------------------------------------------


async def served(path: Path, text: str) -> web.AppRunner:
    async def ready(request):
        return web.Response(text=text)

    app = web.Application()
    app.router.add_get("/v2/models/line/ready", ready)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.UnixSite(runner, str(path)).start()
    return runner


async def answer_at(endpoint: str) -> str:
    client, base = upstream.session(endpoint)
    async with client, client.get(f"{base}/v2/models/line/ready") as answer:
        return await answer.text()


async def test_a_replicas_socket_is_reached_and_a_link_in_its_place_is_not(tmp_path):
    real, other = tmp_path / "server.sock", tmp_path / "engine.sock"
    runners = [await served(real, "replica"), await served(other, "engine")]
    try:
        assert await answer_at(f"unix:{real}") == "replica"
        assert await upstream.ready(f"unix:{real}", "line")
        link = tmp_path / "link.sock"
        link.symlink_to(other)
        with pytest.raises(ConnectionRefusedError, match="not a socket"):
            upstream.session(f"unix:{link}")
        assert not await upstream.ready(f"unix:{link}", "line")
        (tmp_path / "file").write_text("")
        with pytest.raises(ConnectionRefusedError):
            upstream.session(f"unix:{tmp_path / 'file'}")
        assert not await upstream.ready(f"unix:{tmp_path / 'absent'}", "line")
    finally:
        for runner in runners:
            await runner.cleanup()


async def test_what_is_put_at_the_path_after_it_was_opened_is_not_reached(tmp_path):
    real, other = tmp_path / "server.sock", tmp_path / "engine.sock"
    runners = [await served(real, "replica"), await served(other, "engine")]
    client, base = upstream.session(f"unix:{real}")
    connector = client.connector
    try:
        os.rename(real, tmp_path / "moved.sock")
        real.symlink_to(other)  # swapped after the router opened it
        async with client.get(f"{base}/v2/models/line/ready") as answer:
            assert await answer.text() == "replica"
    finally:
        await client.close()
        for runner in runners:
            await runner.cleanup()
    assert connector.fd is None  # closed with the session
