"""Work volume costs on the local backend (as root): create, grow online, write throughput.

    .venv/bin/python benchmarks/volume.py [--write-mb 1024] [--rounds 3]

Measures the time to create a 5 GB volume (sparse file + mkfs.xfs + mount), to grow it by
10 GB while mounted, and sequential write throughput (buffered writes then fsync) inside the
volume against the same write on the data dir's own filesystem. Goal: >= 0.9 of it.
Writes benchmarks/results/volume.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from atelier.spawner.local.volumes import LocalVolume

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "volume.json"
BLOCK = os.urandom(4 * 1024**2)


def write_mb_per_s(directory: Path, megabytes: int) -> float:
    path = directory / "throughput.bin"
    start = time.perf_counter()
    with open(path, "wb") as out:
        for _ in range(megabytes // 4):
            out.write(BLOCK)
        out.flush()
        os.fsync(out.fileno())
    elapsed = time.perf_counter() - start
    path.unlink()
    return megabytes / elapsed


def timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write-mb", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if not LocalVolume.enforced():
        raise SystemExit("run as root with xfsprogs installed: volumes are loop-mounted XFS")

    with tempfile.TemporaryDirectory(dir="/var/tmp") as scratch:
        data_dir = Path(scratch)
        volume = LocalVolume(data_dir, "bench", "v")
        mount = volume.mount
        volume.home.mkdir(parents=True)
        create_s = timed(lambda: (volume.create(5), volume.attach(None)))
        expand_s = timed(lambda: volume.expand(15))
        plain = data_dir / "plain"
        plain.mkdir()
        inside, outside = [], []
        for _ in range(args.rounds):  # alternate, so drift hits both alike
            inside.append(write_mb_per_s(mount, args.write_mb))
            outside.append(write_mb_per_s(plain, args.write_mb))
        volume.delete()

    result = {
        "create_5gb_s": round(create_s, 3),
        "expand_10gb_online_s": round(expand_s, 3),
        "write_mb": args.write_mb,
        "volume_mb_per_s": round(statistics.median(inside), 1),
        "data_dir_mb_per_s": round(statistics.median(outside), 1),
        "ratio": round(statistics.median(inside) / statistics.median(outside), 3),
        "goal": "ratio >= 0.9",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
