"""Save as image: Atelier's save of a ~500 MB change against the bare tools doing the same
work, in one run (as root).

`--backend local` (the default): an instance on Atelier's local backend gets `--megabytes`
of fresh random files in its home; the sample is the time from the save request until its
operation reads `succeeded` (the layer archived as the instance's account, hashed, written,
verified). The bare tool is `tar -c . | sha256sum` of the same home. Goal: Atelier's
throughput >= 0.5x the bare one's.

`--backend docker`: the same change in an instance on the Docker backend (the tests' private
engine, the registry Atelier starts); Atelier's save (commit, push, verify) against a bare
`docker commit` + `docker push` of the same container to the same registry. Goal: <= 1.2x
the bare time.

Each round writes a new change (on Docker one for each side, so that neither finds its layer
in the registry already) and alternates which side goes first. `--backend all` runs both.

    .venv/bin/python benchmarks/snapshot.py [--backend local|docker|all] [--megabytes 500]
                                            [--rounds 3]

Writes benchmarks/results/snapshot.json, each backend under its own key; a run of one
backend keeps the other's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import BASE, WORK, Hub, image_envs  # noqa: E402 - the e2e harness
from kernels import run_in  # noqa: E402
from spawn import machine  # noqa: E402 - beside this script

RESULTS = ROOT / "benchmarks" / "results" / "snapshot.json"
MB = 1024**2
CHANGE = """
import os, pathlib
home = pathlib.Path.home()
for old in home.glob("change-*"):
    old.unlink()
with open(home / "change-{round}", "wb") as out:
    for _ in range({megabytes}):
        out.write(os.urandom(1 << 20))
print("written")
"""


def save_seconds(hub, token: str, instance: str, name: str) -> float:
    """From the save request until its operation succeeded."""
    started = time.perf_counter()
    response = hub.atelier(
        "POST", f"/instances/bench/{instance}/images", token, json={"name": name}
    )
    assert response.status_code == 202, response.text
    operation = response.json()
    while operation["status"] == "running":
        time.sleep(0.05)
        operation = hub.atelier("GET", f"/operations/{operation['id']}", token).json()
    assert operation["status"] == "succeeded", operation
    return time.perf_counter() - started


def timed(command: str) -> float:
    started = time.perf_counter()
    subprocess.run(command, shell=True, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def run_local(args) -> dict:
    envs = image_envs()
    hub = Hub(envs)
    try:
        token = hub.add_user("bench")
        hub.start("bench", "box", token, {"image": BASE, "spec": "cpu.2u8g"})
        home = hub.home("bench", "box")
        atelier, bare = [], []
        for turn in range(args.rounds):
            change = CHANGE.format(round=turn, megabytes=args.megabytes)
            assert run_in(hub, "bench", "box", token, change) == "written\n"
            size = int(
                subprocess.check_output(["du", "-sb", "--exclude=./work", str(home)]).split()[0]
            )
            sides = [
                (atelier, save_seconds, (hub, token, "box", f"round-{turn}")),
                (bare, timed, (f"tar -C {home} --exclude=./work -c . | sha256sum",)),
            ]
            for samples, measure, arguments in sides if turn % 2 == 0 else sides[::-1]:
                samples.append(size / MB / measure(*arguments))
    finally:
        hub.stop()
    return {
        "machine": machine(),
        "megabytes": args.megabytes,
        "atelier_mb_per_s": [round(x, 1) for x in atelier],
        "bare_tar_sha256sum_mb_per_s": [round(x, 1) for x in bare],
        "ratio": round(statistics.median(atelier) / statistics.median(bare), 3),
        "goal": "ratio >= 0.5 (Atelier's throughput / tar | sha256sum's)",
    }


def run_docker(args) -> dict:
    """Atelier's save against `docker commit` + `docker push` of the same container."""
    import contextlib
    import tempfile

    from dockerengine import Engine
    from dockerhub import container_of, docker_hub

    from atelier.spawner.docker import images
    from atelier.spawner.docker.registry import USER, Files

    envs = image_envs()
    engine = Engine()
    hub = None
    try:
        with contextlib.closing(engine.client()) as client:
            images.build(client, BASE, WORK / "docker-cache", lambda line: None)
            hub = docker_hub(envs, engine)
            token = hub.add_user("bench")
            hub.start("bench", "box", token, {"image": BASE, "spec": "cpu.2u4g"})
            container = container_of(hub, client, "bench", "box")["Id"]
            port = yaml.safe_load(hub.config.read_text())["backend_options"]["registry_port"]
            password = Files(hub.dir / "data" / "registry").password.read_text().strip()
            with tempfile.TemporaryDirectory() as config:  # the bare CLI's login, not root's
                docker = f"DOCKER_HOST={engine.url} docker --config {config}"
                login = f"{docker} login -u {USER} --password-stdin 127.0.0.1:{port}"
                subprocess.run(login, shell=True, input=password.encode(), check=True)
                atelier, bare = [], []
                for turn in range(args.rounds):
                    tag = f"127.0.0.1:{port}/bench/bare:{turn}"
                    bare_save = f"{docker} commit {container} {tag} && {docker} push {tag}"
                    sides = [
                        (atelier, save_seconds, (hub, token, "box", f"round-{turn}")),
                        (bare, timed, (bare_save,)),
                    ]
                    if turn % 2:
                        sides.reverse()
                    for number, (samples, measure, arguments) in enumerate(sides):
                        # a change of its own: the registry has none of its layers yet
                        change = CHANGE.format(round=f"{turn}-{number}", megabytes=args.megabytes)
                        assert run_in(hub, "bench", "box", token, change) == "written\n"
                        samples.append(measure(*arguments))
    finally:
        if hub is not None:
            hub.stop()
        engine.stop()
    return {
        "machine": machine(),
        "megabytes": args.megabytes,
        "atelier_s": [round(x, 2) for x in atelier],
        "bare_commit_push_s": [round(x, 2) for x in bare],
        "ratio": round(statistics.median(atelier) / statistics.median(bare), 3),
        "goal": "ratio <= 1.2 (Atelier's save time / docker commit + docker push's)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=("local", "docker", "all"), default="local")
    parser.add_argument("--megabytes", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for backend in ("local", "docker") if args.backend == "all" else (args.backend,):
        results[backend] = {"local": run_local, "docker": run_docker}[backend](args)
        print(json.dumps({backend: results[backend]}, indent=2))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
