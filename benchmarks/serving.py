"""Model serving: a model deployed on Atelier and called through the hub's address, against the
bare model server serving the same model directory on the same machine, in one run.

The model is the TorchScript of a Linear(1, 1) (y = 3x + 2), as examples/train_ddp.py saves
one, made by the image environment's python in an instance's work volume: the "no code" path.
Atelier's side is a deployment of it (`pytorch_2.13.0-cpu-py_3.11-debian_12-x86_64`, spec
cpu.1u4g, 1 replica: the owner's account, a cgroup with the spec's 1 CPU and 4 GiB, the
seccomp filter, a Unix socket) called with an app key at `<hub>/deployments/bench/line/v2/...`:
configurable-http-proxy, the router, the replica. The bare side is `python -m atelier.serving
<the same directory> --name line --port <port>` with the same environment's python, in a
cgroup of the same limits (what a model server on a node of that size would get): no account,
no seccomp, no router, no proxy. A third side calls the router's own port, to tell the proxy's
share from the router's, and a fourth the project's configurable-http-proxy alone in front of
the bare server, to tell what the hub's proxy costs any request here. The client, the proxy
and the router share what the servers' 1 CPU leaves of the machine, as the hub's own
processes do beside its replicas.

Every side gets the same OIP v2 infer request (one [4, 1] FP32 tensor; the answer checked)
over keep-alive HTTP/1.1 from a minimal raw-socket client (the request's bytes built once),
cheap because it shares the 2 cores with the servers. Latency: one client, `--requests`
requests one after another, p50 and p99. Throughput: `--clients` clients (a thread each)
for `--seconds`, requests/s. Each round measures every side, in alternating order; a short
first round warms caches and is dropped. Reported: medians over `--repeat` rounds, every
round's figures, answers other than 200 (there must be none), and the goals: throughput
atelier / bare >= 0.9, p50 atelier - bare <= 2 ms.

    .venv/bin/python benchmarks/serving.py [--repeat 5] [--requests 1000] [--seconds 10]
                                           [--clients 4]

Writes benchmarks/results/serving.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import TORCH, WORK, Hub, free_port, image_envs  # noqa: E402 - the e2e harness
from spawn import machine  # noqa: E402 - beside this script

from atelier.hub.settings import DEFAULT_CONFIG  # noqa: E402
from atelier.spawner import core  # noqa: E402
from atelier.spawner.local import cgroups  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "serving.json"
SPEC, NAME, MODEL_DIR = "cpu.1u4g", "line", "models/line"
BARE_GROUP = "atelier-bench.bare"  # the bare server's cgroup: the spec's limits
SIDES = ("atelier", "router_direct", "proxy_only", "bare")
PROXY = ROOT / "node_modules" / ".bin" / "configurable-http-proxy"
INPUT = [1.0, 2.0, 3.0, 4.0]
MAKE_MODEL = """import sys, torch
hidden = int(sys.argv[2])
if hidden:  # an MLP with some work in it: 1 -> hidden -> hidden -> 1, seeded
    torch.manual_seed(0)
    layers = [torch.nn.Linear(1, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, hidden)]
    model = torch.nn.Sequential(*layers, torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
else:  # y = 3x + 2: the work is all the serving's
    model = torch.nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(3.0)
        model.bias.fill_(2.0)
torch.jit.script(model).save(sys.argv[1])
"""


class Client:
    """One keep-alive HTTP/1.1 connection sending one prepared request over and over."""

    def __init__(self, port: int, request: bytes):
        self.port, self.request, self.reconnects = port, request, -1
        self.connect()

    def connect(self) -> None:
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.reader, self.reconnects = self.sock.makefile("rb"), self.reconnects + 1

    def call(self, again: bool = True) -> tuple[int, bytes]:
        """(status, body) of one more request; a connection the server has closed is opened
        again (counted) and the request sent on it."""
        try:
            self.sock.sendall(self.request)
            status = self.reader.readline()
            if not status:
                raise ConnectionResetError("the server closed the connection")
        except ConnectionError:
            if not again:
                raise
            self.close()
            self.connect()
            return self.call(again=False)
        length = None
        while (line := self.reader.readline()) not in (b"\r\n", b""):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length is None:  # every server here sends one: no chunked reading needed
            raise RuntimeError(f"an answer without Content-Length: {status!r}")
        body = self.reader.read(length)
        return int(status[9:12]), body

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def infer_request(port: int, path: str, key: str) -> bytes:
    """The same request for every side (the bare server ignores the app key)."""
    tensor = {"name": "x", "shape": [len(INPUT), 1], "datatype": "FP32", "data": INPUT}
    body = json.dumps({"inputs": [tensor]}).encode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def answer_of(port: int, request: bytes, side: str) -> list[float]:
    """What the side answers (it must answer 200)."""
    client = Client(port, request)
    status, body = client.call()
    client.close()
    if status != 200:
        raise RuntimeError(f"{side} answered {status}: {body[:500]!r}")
    return json.loads(body)["outputs"][0]["data"]


def quantiles_ms(seconds: list[float]) -> tuple[float, float]:
    """p50 and p99, in ms."""
    cuts = statistics.quantiles(seconds, n=100)
    return round(cuts[49] * 1000, 3), round(cuts[98] * 1000, 3)


def latency(port: int, request: bytes, count: int) -> dict:
    """One client, `count` requests one after another."""
    client, times, bad = Client(port, request), [], 0
    for _ in range(count):
        start = time.perf_counter()
        status, _ = client.call()
        times.append(time.perf_counter() - start)
        bad += status != 200
    client.close()
    p50, p99 = quantiles_ms(times)
    return {"p50_ms": p50, "p99_ms": p99, "non_200": bad, "reconnects": client.reconnects}


def throughput(port: int, request: bytes, clients: int, seconds: float) -> dict:
    """`clients` clients, a thread each, sending as fast as they are answered for `seconds`."""
    connections = [Client(port, request) for _ in range(clients)]
    times, bad, failures = [[] for _ in connections], [0] * clients, []
    gate, deadline = threading.Barrier(clients + 1), 0.0

    def fire(n: int) -> None:
        gate.wait()
        while (start := time.perf_counter()) < deadline:
            try:
                status, _ = connections[n].call()
            except (OSError, RuntimeError) as error:  # counted, not lost in a thread
                failures.append(repr(error))
                return
            times[n].append(time.perf_counter() - start)
            bad[n] += status != 200

    threads = [threading.Thread(target=fire, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    deadline = began + seconds
    gate.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began  # until the last answer, just past the deadline
    for client in connections:
        client.close()
    if failures:
        raise RuntimeError(f"{len(failures)} clients failed, the first: {failures[0]}")
    answered = [t for each in times for t in each]
    return {
        "requests_per_s": round(len(answered) / elapsed, 1),
        "loaded_p50_ms": quantiles_ms(answered)[0],
        "non_200": sum(bad),
        "reconnects": sum(c.reconnects for c in connections),
    }


def deployed(hub: Hub, python: Path, hidden: int) -> tuple[str, Path]:
    """(app key, model directory): the model made in an instance's volume and deployed."""
    token = hub.add_user("bench")
    hub.start("bench", "lab", token, {"image": TORCH, "spec": SPEC})
    directory = hub.volume("bench", "lab") / MODEL_DIR
    directory.mkdir(parents=True)
    made = [str(python), "-c", MAKE_MODEL, str(directory / "model.pt"), str(hidden)]
    subprocess.run(made, check=True)
    for made in (directory / "model.pt", directory, directory.parent):
        os.chown(made, *hub.volume_owner("bench"))  # the owner's, as if they had saved it
    body = {"name": NAME, "image": TORCH, "spec": SPEC, "volume": "lab", "model": MODEL_DIR}
    response = hub.atelier("POST", "/deployments", token, json={**body, "replicas": 1})
    if response.status_code != 201:
        raise RuntimeError(f"deployment refused: {response.status_code} {response.text[:500]}")

    def settled():
        now = hub.atelier("GET", f"/deployments/bench/{NAME}", token).json()
        return now if now["status"] in ("running", "failed") and not now["reason"] else None

    if hub.wait_for(settled, 180, "the deployment to run")["status"] != "running":
        events = hub.atelier("GET", f"/deployments/bench/{NAME}/events", token).json()
        raise RuntimeError(f"the deployment failed: {events}")
    return hub.atelier("POST", f"/deployments/bench/{NAME}/keys", token).json()["key"], directory


def bare_server(python: Path, directory: Path, port: int, log: Path) -> subprocess.Popen:
    """The same model server on a loopback port, in a cgroup with the spec's CPU and memory
    (as the local backend makes the replica's), once its model is ready."""
    spec = core.Spec(SPEC)
    limits = cgroups.Limits(memory_bytes=spec.memory_gb * 1024**3, cpu=spec.cpu)
    rules = cgroups.device_rules([], cgroups.read_device_nodes())
    groups = cgroups.Hierarchy.detect().create(BARE_GROUP, limits, rules)

    def join() -> None:
        for group in groups:
            (group / "cgroup.procs").write_text(str(os.getpid()))

    command = [str(python), "-m", "atelier.serving", str(directory), "--name", NAME]
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [*command, "--port", str(port)], cwd=log.parent, stdin=subprocess.DEVNULL,
            stdout=output, stderr=subprocess.STDOUT, preexec_fn=join,
        )  # fmt: skip
    return answering(process, port, log, 120, "the bare server")


def answering(process: subprocess.Popen, port: int, log: Path, patience: float, what: str):
    """`process` once the model server answers ready at `port` (itself or behind it)."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(requests.ConnectionError):
            if requests.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=5).ok:
                return process
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{what} did not get ready:\n{log.read_text()[-3000:]}")


def proxy_to(target_port: int, port: int, log: Path) -> subprocess.Popen:
    """configurable-http-proxy as the hub runs it (the project's own), its default target
    the bare server: what the hub's proxy alone costs a request on this machine."""
    argv = [str(PROXY), "--ip", "127.0.0.1", "--port", str(port), "--api-ip", "127.0.0.1",
            "--api-port", str(free_port()), "--default-target", f"http://127.0.0.1:{target_port}",
            "--log-level", "info"]  # fmt: skip
    environment = {**os.environ, "CONFIGPROXY_AUTH_TOKEN": os.urandom(16).hex()}
    with open(log, "wb") as output:
        process = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT, env=environment)
    return answering(process, port, log, 30, "the proxy")


def run(args) -> dict:
    envs = image_envs()
    python = envs / TORCH / "bin" / "python"
    scratch = Path(tempfile.mkdtemp(prefix="bare-serving-", dir=WORK))
    specs = [*yaml.safe_load(DEFAULT_CONFIG.read_text())["specs"], {"name": SPEC}]
    hub, bare, proxy = Hub(envs, specs=specs), None, None
    rounds: dict[str, list[dict]] = {side: [] for side in SIDES}
    try:
        key, directory = deployed(hub, python, args.hidden)
        bare_port = free_port()
        bare = bare_server(python, directory, bare_port, scratch / "server.log")
        proxy_port = free_port()
        proxy = proxy_to(bare_port, proxy_port, scratch / "proxy.log")
        router_port = yaml.safe_load(hub.config.read_text())["router_port"]
        infer = f"/v2/models/{NAME}/infer"
        route = f"/deployments/bench/{NAME}{infer}"
        wire = {
            "atelier": (hub.port, infer_request(hub.port, route, key)),
            "router_direct": (router_port, infer_request(router_port, route, key)),
            "proxy_only": (proxy_port, infer_request(proxy_port, infer, key)),
            "bare": (bare_port, infer_request(bare_port, infer, key)),
        }
        expected = answer_of(*wire["bare"], "bare")
        if not args.hidden and expected != [3 * x + 2 for x in INPUT]:
            raise RuntimeError(f"the bare server answered {expected}, not y = 3x + 2")
        for side in SIDES:  # the same model: the same answer
            if answer_of(*wire[side], side) != expected:
                raise RuntimeError(f"{side} answered otherwise than the bare server")
        for turn in range(args.repeat + 1):
            count, seconds = (200, 2.0) if turn == 0 else (args.requests, args.seconds)
            for side in SIDES if turn % 2 == 0 else SIDES[::-1]:
                one = latency(*wire[side], count)
                many = throughput(*wire[side], args.clients, seconds)
                for summed in ("non_200", "reconnects"):
                    many[summed] += one.pop(summed)
                print(f"round {turn} {side}: {one | many}", flush=True)
                if turn:  # round 0 warms up
                    rounds[side].append({"round": turn, **one, **many})
    finally:
        for process in (proxy, bare):
            if process is not None:
                process.kill()
                process.wait()
        cgroups.remove(cgroups.Hierarchy.detect().groups(BARE_GROUP))
        hub.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    result = {side: summary(rounds[side]) for side in SIDES}
    plain = result["bare"]
    for side in ("atelier", "router_direct", "proxy_only"):
        speed = result[side]["requests_per_s_median"] / plain["requests_per_s_median"]
        result[side]["throughput_to_bare"] = round(speed, 3)
        result[side]["added_p50_ms"] = round(
            result[side]["p50_ms_median"] - plain["p50_ms_median"], 3
        )
    ratio, added = (result["atelier"][k] for k in ("throughput_to_bare", "added_p50_ms"))
    result.update(
        ratio={"throughput": ratio, "added_p50_ms": added},
        goal="throughput: atelier / bare >= 0.9; added p50: atelier - bare <= 2 ms",
        goal_met={"throughput": ratio >= 0.9, "added_p50": added <= 2.0},
        non_200={side: sum(r["non_200"] for r in rounds[side]) for side in SIDES},
        requests=args.requests, seconds=args.seconds, clients=args.clients, repeat=args.repeat,
        model=f"TorchScript MLP 1 -> {args.hidden} -> {args.hidden} -> 1 (model.pt)"
        if args.hidden
        else "TorchScript Linear(1, 1), y = 3x + 2 (model.pt)",
        request=f"POST /v2/models/{NAME}/infer: one FP32 tensor [{len(INPUT)}, 1], JSON",
        image=TORCH, spec=SPEC, replicas=1,
        paths={
            "atelier": "configurable-http-proxy -> router -> the replica's Unix socket",
            "router_direct": "the router's loopback port -> the replica's Unix socket",
            "proxy_only": "configurable-http-proxy (as the hub runs it) -> the bare server",
            "bare": f"python -m atelier.serving <model dir> --name {NAME} --port <port>, "
            f"in a cgroup of {SPEC}'s CPU and memory",
        },
        load_generator="keep-alive HTTP/1.1 on raw sockets: 1 client for latency, "
        f"{args.clients} threads for throughput",
        machine=machine(),
        load_average_at_end=[round(x, 2) for x in os.getloadavg()],
    )  # fmt: skip
    return result


def summary(rounds: list[dict]) -> dict:
    """A side's medians over the rounds, and the rounds."""
    keys = ("p50_ms", "p99_ms", "requests_per_s", "loaded_p50_ms")
    medians = {f"{k}_median": round(statistics.median(r[k] for r in rounds), 3) for k in keys}
    return {**medians, "rounds": rounds}


def table(result: dict) -> str:
    rows = [f"{'':<24}" + "".join(f"{side:>15}" for side in SIDES)]
    for label, key in (
        ("p50 latency (ms)", "p50_ms_median"),
        ("p99 latency (ms)", "p99_ms_median"),
        ("throughput (req/s)", "requests_per_s_median"),
        ("p50 under load (ms)", "loaded_p50_ms_median"),
        ("throughput / bare", "throughput_to_bare"),
        ("added p50 (ms)", "added_p50_ms"),
    ):
        values = (result[side].get(key, "") for side in SIDES)
        rows.append(f"  {label:<22}" + "".join(f"{value:>15}" for value in values))
    rows.append(f"  goal: {result['goal']}; met: {result['goal_met']}")
    rows.append(f"  answers not 200: {result['non_200']}")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument(
        "--hidden", type=int, default=0, help="an MLP this wide (0: the Linear(1, 1))"
    )
    args = parser.parse_args()
    if args.repeat < 1 or args.requests < 100 or args.seconds <= 0 or args.clients < 1:
        parser.error("--repeat at least 1, --requests at least 100, --seconds over 0, --clients 1+")

    WORK.mkdir(parents=True, exist_ok=True)
    result = run(args)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    kept = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    kept = kept if "linear" in kept or not kept else {}  # an older layout: replaced
    label = f"mlp_{args.hidden}" if args.hidden else "linear"
    RESULTS.write_text(json.dumps({**kept, label: result}, indent=2) + "\n")
    print(table(result))
    print(f"written to {RESULTS.relative_to(ROOT)}")
    if any(result["non_200"].values()):
        raise SystemExit(f"answers not 200: {result['non_200']}")


if __name__ == "__main__":
    main()
