"""Atelier API under load: many users listing their instances and the image catalog.

A hub with `--users` users x 3 defined (not started) instances; as many simulated users
(asyncio, one connection each) list instances and images in a loop for `--seconds`.

    .venv/bin/python benchmarks/api.py [--users 100] [--seconds 30]

Writes benchmarks/results/api.json: requests/s, p50/p99 latency and errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import BASE, Hub, image_envs  # noqa: E402 - the e2e harness

RESULTS = ROOT / "benchmarks" / "results" / "api.json"


async def user_loop(session, api: str, token: str, until: float, latencies: list, errors: list):
    headers = {"Authorization": f"token {token}"}
    while time.monotonic() < until:
        for path in ("/instances", "/images"):
            start = time.perf_counter()
            async with session.get(api + path, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    errors.append(response.status)
            latencies.append(time.perf_counter() - start)


async def load(api: str, tokens: list[str], seconds: float) -> tuple[list[float], list[int], float]:
    latencies: list[float] = []
    errors: list[int] = []
    connector = aiohttp.TCPConnector(limit=len(tokens))
    async with aiohttp.ClientSession(connector=connector) as session:
        start = time.monotonic()
        until = start + seconds
        await asyncio.gather(
            *(user_loop(session, api, t, until, latencies, errors) for t in tokens)
        )
        return latencies, errors, time.monotonic() - start


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()

    hub = Hub(image_envs(), culling={"idle_minutes": 0})
    try:
        options = {"user_options": {"image": BASE, "spec": "cpu.2u4g"}}
        tokens = []
        for n in range(args.users):
            token = hub.add_user(f"load{n}")
            for i in range(3):
                response = hub.api("PUT", f"/users/load{n}/servers/i{i}", token, json=options)
                assert response.status_code == 201, response.text
            tokens.append(token)
        api = f"{hub.url}/services/atelier/api/v1"
        latencies, errors, elapsed = asyncio.run(load(api, tokens, args.seconds))
    finally:
        hub.stop()

    result = {
        "users": args.users,
        "instances_defined": args.users * 3,
        "seconds": round(elapsed, 1),
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "p99_ms": round(percentile(latencies, 99) * 1000, 1),
        "mean_ms": round(statistics.mean(latencies) * 1000, 1),
        "errors": len(errors),
        "goal": "p99 < 100 ms, no errors",
        "machine": f"{os.cpu_count()} cores; clients and hub on the same machine",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
