"""Create-to-ready latency (and, on Docker, memory): Atelier's hub against a bare JupyterHub,
in one run.

`--backend local` (the default): both hubs run side by side on loopback with the same
JupyterLab environment; the bare one uses JupyterHub's SimpleLocalProcessSpawner.

`--backend docker`: a private Docker engine (tests/dockerengine.py) with the catalog's base
image built in it (`atelier/python_3.11-cpu-py_3.11-debian_12-x86_64`); Atelier's hub on
`backend: docker` against a bare JupyterHub with plain DockerSpawner on the same engine and
the same image (host network, internal IP, a random loopback port per start, removed when
stopped, user 1000, `jupyterhub-singleuser`). Memory per instance is the engine's figure for
each of the concurrent containers (stats API: usage less inactive page cache, as `docker
stats` shows it; the cgroup's own files when the API gives none), averaged.

`--backend all` runs both. A sample is the time from the create request until the instance's
`/api/status` answers through the proxy. Sequential spawns alternate between the hubs (a
first warm-up round is dropped); then 10 instances are created at once on each.

    .venv/bin/python benchmarks/spawn.py [--backend local|docker|all] [--samples 5]
                                         [--concurrent 10]

Writes benchmarks/results/spawn.json: each backend's results under its own key ("local",
"docker"); a run of one backend keeps the other's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from barehub import SPAWN_TIMEOUT_S, BareHub  # noqa: E402
from conftest import BASE, WORK, Hub, image_envs  # noqa: E402 - the e2e harness
from dockerhub import docker_hub  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "spawn.json"
MIB = 1024**2


class SpawnFailed(RuntimeError):
    pass


def error_lines(hub, count: int = 15) -> str:
    """The hub log's last errors and tracebacks, for a report."""
    lines = hub.log_text().splitlines()
    picked = [
        line
        for line in lines
        if any(k in line for k in (" E ", "[E ", "ERROR", "Error", "Traceback", "Exception"))
    ]
    return "\n".join((picked or lines)[-count:])


def spawn(hub, user: str, token: str, name: str, options: dict | None) -> float:
    """Seconds from the create request until /api/status answers through the proxy;
    SpawnFailed (with the hub log's errors) when the instance fails to start or the hub
    gives up on it."""
    start = time.perf_counter()
    response = hub.api("POST", f"/users/{user}/servers/{name}", token, json=options)
    if response.status_code not in (201, 202):
        raise SpawnFailed(f"{user}/{name}: {response.status_code} {response.text[:500]}")
    status = f"{hub.url}/user/{user}/{name}/api/status"
    checked = time.perf_counter()
    while True:
        try:
            if requests.get(status, headers={"Authorization": f"token {token}"}, timeout=10).ok:
                return time.perf_counter() - start
        except requests.ConnectionError:
            pass
        now = time.perf_counter()
        if now - checked > 2:  # is the hub still starting it?
            checked = now
            servers = hub.api("GET", f"/users/{user}").json().get("servers", {})
            if name not in servers or now - start > SPAWN_TIMEOUT_S:
                raise SpawnFailed(
                    f"{user}/{name} did not start ({now - start:.0f} s):\n{error_lines(hub)}"
                )
        time.sleep(0.05)


def remove(hub, user: str, token: str, name: str) -> None:
    hub.api(
        "DELETE",
        f"/users/{user}/servers/{name}",
        token,
        json={"remove": True, "confirm": "delete-volume"},
    )
    deadline = time.monotonic() + 120
    while hub.api("GET", f"/users/{user}/servers/{name}", token).status_code != 404:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{user}/{name} was not removed:\n{error_lines(hub)}")
        time.sleep(0.2)


def sequential(hubs: dict, samples: int) -> dict[str, list[float]]:
    """Create-to-ready, alternating between the hubs; the first round warms caches and is
    dropped."""
    tokens = {key: hub.add_user("seq") for key, (hub, _) in hubs.items()}
    latencies: dict[str, list[float]] = {key: [] for key in hubs}
    for n in range(samples + 1):
        for key, (hub, opts) in hubs.items():
            latency = spawn(hub, "seq", tokens[key], f"s{n}", opts)
            remove(hub, "seq", tokens[key], f"s{n}")
            if n:
                latencies[key].append(latency)
    return latencies


def concurrent(hub, options: dict | None, count: int, measure=None) -> dict:
    """`count` users create one instance each at once; `measure(hub, users)` (with every
    instance ready) adds its figures before they are removed."""
    users = [(f"burst{i}", hub.add_user(f"burst{i}")) for i in range(count)]
    start = time.perf_counter()
    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(spawn, hub, user, token, "b", options) for user, token in users]
        latencies = [future.result() for future in futures]
    total = time.perf_counter() - start
    result = {"total_s": round(total, 3), "median_s": round(statistics.median(latencies), 3)}
    if measure is not None:
        result.update(measure(hub, [user for user, _ in users]))
    for user, token in users:
        remove(hub, user, token, "b")
    return result


def sequential_and_concurrent(hubs: dict, args, measure=None) -> dict:
    samples = sequential(hubs, args.samples)
    key = f"concurrent_{args.concurrent}"
    result = {
        name: {
            "sequential_median_s": round(statistics.median(samples[name]), 3),
            "sequential_samples_s": [round(s, 3) for s in samples[name]],
            key: concurrent(hub, opts, args.concurrent, measure),
        }
        for name, (hub, opts) in hubs.items()
    }
    atelier, bare = result["atelier"], result["bare"]
    result["ratio"] = {
        "sequential_median": round(atelier["sequential_median_s"] / bare["sequential_median_s"], 3),
        f"{key}_total": round(atelier[key]["total_s"] / bare[key]["total_s"], 3),
    }
    return result


def machine() -> str:
    return f"{os.cpu_count()} cores, {'root' if os.geteuid() == 0 else 'non-root'}"


# local ------------------------------------------------------------------------------------


def run_local(args) -> dict:
    envs = image_envs()
    atelier = Hub(envs, limits={"instances_per_user": 10})
    try:
        bare = BareHub(envs)
    except BaseException:
        atelier.stop()
        raise
    options = {"image": BASE, "spec": "cpu.2u4g"}
    try:
        result = sequential_and_concurrent(
            {"atelier": (atelier, options), "bare": (bare, None)}, args
        )
    finally:
        atelier.stop()
        bare.stop()
    result["goal"] = "atelier / bare <= 1.10 for both"
    result["machine"] = machine()
    return result


# docker -----------------------------------------------------------------------------------


def cgroup_memory(container_id: str) -> dict | None:
    """The container's memory from its cgroup under the engine (v1 memory controller, or
    the cgroup2 hierarchy): usage and inactive page cache, in bytes."""
    for root, usage_file, inactive_key in (
        (Path("/sys/fs/cgroup/memory"), "memory.usage_in_bytes", "total_inactive_file"),
        (Path("/sys/fs/cgroup/unified"), "memory.current", "inactive_file"),
        (Path("/sys/fs/cgroup"), "memory.current", "inactive_file"),
    ):
        for directory in (root / "docker" / container_id, *root.glob(f"**/*{container_id}*")):
            usage = directory / usage_file
            if usage.is_file():
                stat = dict(
                    line.split() for line in (directory / "memory.stat").read_text().splitlines()
                )
                return {"usage": int(usage.read_text()), "inactive": int(stat.get(inactive_key, 0))}
    return None


def container_memory(client, container_id: str) -> tuple[dict, str]:
    """(usage and inactive page cache in bytes, where they came from): the engine's stats
    API, or the cgroup's files when it gives no memory figures."""
    stats = client.api.stats(container_id, stream=False, one_shot=True)["memory_stats"]
    if stats.get("usage"):
        detail = stats.get("stats", {})
        inactive = detail.get("total_inactive_file", detail.get("inactive_file", 0))
        return {"usage": stats["usage"], "inactive": inactive}, "engine stats API"
    found = cgroup_memory(container_id)
    if found is None:
        raise RuntimeError(f"no memory figures for container {container_id[:12]}")
    return found, "cgroup files"


def docker_memory(engine):
    """A `concurrent` measure: the mean memory of the hub's running containers, in MiB."""

    def measure(hub, users: list[str]) -> dict:
        time.sleep(3)  # the servers settle after their first request
        ids = []
        for user in users:
            state = hub.api("GET", f"/users/{user}").json()["servers"]["b"]["state"]
            ids.append(state["object_id"])
        with contextlib.closing(engine.client()) as client:
            figures = [container_memory(client, cid) for cid in ids]
        used = [(f["usage"] - f["inactive"]) / MIB for f, _ in figures]
        raw = [f["usage"] / MIB for f, _ in figures]
        return {
            "memory_per_instance_mib": round(statistics.mean(used), 1),
            "memory_usage_with_cache_mib": round(statistics.mean(raw), 1),
            "memory_samples_mib": [round(m, 1) for m in used],
            "memory_source": sorted({source for _, source in figures})[0],
        }

    return measure


def run_docker(args) -> dict:
    from dockerengine import Engine

    from atelier.spawner.docker import images

    envs = image_envs()
    image = images.image_tag(BASE)
    started = time.monotonic()
    engine = Engine()
    atelier = bare = None
    try:
        print(f"engine at {engine.url} ({'throwaway' if engine.private else 'shared'} data root)")
        with contextlib.closing(engine.client()) as client:
            images.build(client, BASE, WORK / "docker-cache", lambda line: None)
            engine_version = client.version()["Version"]
        print(f"{image} ready after {time.monotonic() - started:.0f} s")
        atelier = docker_hub(envs, engine, limits={"instances_per_user": 10})
        bare = BareHub(engine=engine, image=image)
        hubs = {"atelier": (atelier, {"image": BASE, "spec": "cpu.2u4g"}), "bare": (bare, None)}
        result = sequential_and_concurrent(hubs, args, docker_memory(engine))
    finally:
        for hub in (atelier, bare):
            if hub is not None:
                with contextlib.suppress(Exception):
                    hub.stop()
        engine.stop()
    key = f"concurrent_{args.concurrent}"
    result["ratio"]["memory_per_instance"] = round(
        result["atelier"][key]["memory_per_instance_mib"]
        / result["bare"][key]["memory_per_instance_mib"],
        3,
    )
    result["goal"] = "atelier / bare <= 1.10 for each"
    result["image"] = image
    result["bare_spawner"] = (
        "dockerspawner.DockerSpawner: network_name='host', use_internal_ip=True, a random "
        "loopback port per start, remove=True, user 1000, cmd jupyterhub-singleuser"
    )
    result["engine"] = f"dockerd {engine_version} (tests/dockerengine.py), host network"
    result["machine"] = machine()
    return result


# results ----------------------------------------------------------------------------------


def merged(found: dict, new: dict) -> dict:
    """The results file with `new`'s backends replaced; a file from before the backends had
    their own keys holds the local results."""
    if "atelier" in found:
        found = {"local": found}
    return {**found, **new}


def table(results: dict) -> str:
    rows = [f"{'':<30}{'atelier':>10}{'bare':>10}{'ratio':>8}"]
    for backend, result in results.items():
        rows.append(f"{backend}:")
        concurrent_key = next(k for k in result["atelier"] if k.startswith("concurrent_"))
        figures = [
            ("create->ready median (s)", "sequential_median_s", None, "sequential_median"),
            (
                f"{concurrent_key[11:]} at once, total (s)",
                concurrent_key,
                "total_s",
                f"{concurrent_key}_total",
            ),
            (
                "memory per instance (MiB)",
                concurrent_key,
                "memory_per_instance_mib",
                "memory_per_instance",
            ),
        ]
        for label, key, inner, ratio in figures:
            values = [result[h][key] for h in ("atelier", "bare")]
            if inner is not None:
                if inner not in values[0]:
                    continue
                values = [v[inner] for v in values]
            rows.append(f"  {label:<28}{values[0]:>10}{values[1]:>10}{result['ratio'][ratio]:>8}")
        samples = {h: result[h]["sequential_samples_s"] for h in ("atelier", "bare")}
        rows.append(f"  samples: atelier {samples['atelier']}, bare {samples['bare']}")
        rows.append(f"  goal: {result['goal']}")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=("local", "docker", "all"), default="local")
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--concurrent", type=int, default=10)
    args = parser.parse_args()

    WORK.mkdir(parents=True, exist_ok=True)
    runs = {"local": run_local, "docker": run_docker}
    backends = list(runs) if args.backend == "all" else [args.backend]
    results = {backend: runs[backend](args) for backend in backends}

    found = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(merged(found, results), indent=2) + "\n")
    print(table(results))
    print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
