"""Create-to-ready latency: Atelier's hub against a bare JupyterHub, in one run.

Both hubs run side by side on loopback with the same JupyterLab environment; the bare one uses
JupyterHub's SimpleLocalProcessSpawner. A sample is the time from the create request until
the instance's `/api/status` answers through the proxy. Sequential spawns alternate between
the hubs; then 10 instances are created at once on each.

    .venv/bin/python benchmarks/spawn.py [--samples 5] [--concurrent 10]

Writes benchmarks/results/spawn.json.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import BASE, WORK, Hub, build_env, free_port  # noqa: E402 - the e2e harness

RESULTS = ROOT / "benchmarks" / "results" / "spawn.json"
BARE_CONFIG = """
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.command = ["{root}/node_modules/.bin/configurable-http-proxy"]
c.JupyterHub.db_url = "sqlite:///{dir}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{dir}/cookie_secret"
c.JupyterHub.allow_named_servers = True
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = "{dir}/home/{{username}}"
c.Spawner.cmd = ["{env}/bin/jupyterhub-singleuser"]
c.Spawner.args = {args}
c.Spawner.default_url = "/lab"
c.JupyterHub.services = [{{"name": "bench", "api_token": "{token}"}}]
c.JupyterHub.load_roles = [{{"name": "bench", "services": ["bench"],
    "scopes": ["admin:users", "admin:servers", "access:servers", "tokens"]}}]
"""


class BareHub:
    """A plain JupyterHub with SimpleLocalProcessSpawner and the same JupyterLab."""

    def __init__(self, envs: Path):
        self.dir = WORK / f"bare-{secrets.token_hex(4)}"
        self.dir.mkdir()
        self.port, self.admin_token = free_port(), secrets.token_hex(16)
        config = self.dir / "jupyterhub_config.py"
        config.write_text(
            BARE_CONFIG.format(
                port=self.port,
                hub_port=free_port(),
                proxy_api_port=free_port(),
                root=ROOT,
                dir=self.dir,
                env=envs / BASE,
                token=self.admin_token,
                args=["--allow-root"] if os.geteuid() == 0 else [],
            )
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(self.dir / "hub.log", "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(config)],
            cwd=self.dir,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/hub/api/", timeout=2).ok:
                    return
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        raise RuntimeError("the bare hub did not start")

    api = Hub.api
    add_user = Hub.add_user

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.log.close()


def spawn(hub, user: str, token: str, name: str, options: dict | None) -> float:
    """Seconds from the create request until /api/status answers through the proxy."""
    start = time.perf_counter()
    response = hub.api("POST", f"/users/{user}/servers/{name}", token, json=options)
    assert response.status_code in (201, 202), response.text
    status = f"{hub.url}/user/{user}/{name}/api/status"
    while True:
        try:
            if requests.get(status, headers={"Authorization": f"token {token}"}, timeout=10).ok:
                return time.perf_counter() - start
        except requests.ConnectionError:
            pass
        time.sleep(0.05)


def remove(hub, user: str, token: str, name: str) -> None:
    hub.api(
        "DELETE",
        f"/users/{user}/servers/{name}",
        token,
        json={"remove": True, "confirm": "delete-volume"},
    )
    while hub.api("GET", f"/users/{user}/servers/{name}", token).status_code != 404:
        time.sleep(0.2)


def concurrent(hub, options: dict | None, count: int) -> dict:
    users = [(f"burst{i}", hub.add_user(f"burst{i}")) for i in range(count)]
    start = time.perf_counter()
    with ThreadPoolExecutor(count) as pool:
        latencies = list(pool.map(lambda u: spawn(hub, u[0], u[1], "b", options), users))
    total = time.perf_counter() - start
    for user, token in users:
        remove(hub, user, token, "b")
    return {"total_s": round(total, 3), "median_s": round(statistics.median(latencies), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--concurrent", type=int, default=10)
    args = parser.parse_args()

    envs = WORK / "envs"
    WORK.mkdir(parents=True, exist_ok=True)
    build_env(envs, BASE)
    atelier = Hub(envs, limits={"instances_per_user": 10})
    bare = BareHub(envs)
    options = {"image": BASE, "spec": "cpu.2u4g"}
    try:
        hubs = {"atelier": (atelier, options), "bare": (bare, None)}
        tokens = {key: hub.add_user("seq") for key, (hub, _) in hubs.items()}
        samples: dict[str, list[float]] = {key: [] for key in hubs}
        for n in range(args.samples + 1):  # the first round warms caches and is dropped
            for key, (hub, opts) in hubs.items():
                latency = spawn(hub, "seq", tokens[key], f"s{n}", opts)
                remove(hub, "seq", tokens[key], f"s{n}")
                if n:
                    samples[key].append(latency)
        bursts = {key: concurrent(hub, opts, args.concurrent) for key, (hub, opts) in hubs.items()}
    finally:
        atelier.stop()
        bare.stop()

    result = {
        key: {
            "sequential_median_s": round(statistics.median(samples[key]), 3),
            "sequential_samples_s": [round(s, 3) for s in samples[key]],
            f"concurrent_{args.concurrent}": bursts[key],
        }
        for key in hubs
    }
    result["ratio"] = {
        "sequential_median": round(
            result["atelier"]["sequential_median_s"] / result["bare"]["sequential_median_s"], 3
        ),
        f"concurrent_{args.concurrent}_total": round(
            bursts["atelier"]["total_s"] / bursts["bare"]["total_s"], 3
        ),
    }
    result["goal"] = "atelier / bare <= 1.10 for both"
    result["machine"] = f"{os.cpu_count()} cores, {'root' if os.geteuid() == 0 else 'non-root'}"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
