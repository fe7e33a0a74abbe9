"""SSH through the gateway against a plain OpenSSH sshd on loopback, in one run.

Starts an Atelier hub (the e2e harness) with one running instance whose SSH settings allow a
fresh key, and beside it Debian's sshd on another loopback port, run as the instance's
account (a root sshd refuses the locked system accounts instances run as). With the stock
OpenSSH client and its default algorithms, it measures:

- time to first command: wall time of `ssh <target> true` (new connection each time);
- scp throughput: a 512 MB file of random bytes copied into the instance's work volume and
  back, so both paths write to and read from the same filesystem.

    .venv/bin/python benchmarks/ssh.py [--megabytes 512] [--rounds 3] [--connects 10]

Goals: gateway throughput >= 0.8x the plain sshd's, added connection latency <= 150 ms.
Writes benchmarks/results/ssh.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import BASE, Hub, free_port, image_envs  # noqa: E402 - the e2e harness

RESULTS = ROOT / "benchmarks" / "results" / "ssh.json"
USER = "bench"
PLAIN_SSHD = """\
ListenAddress 127.0.0.1:{port}
HostKey {dir}/host_key
AuthorizedKeysFile {dir}/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile {dir}/sshd.pid
Subsystem sftp /usr/lib/openssh/sftp-server
"""


def keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - start


class Target:
    """One way into the instance: ssh/scp arguments for a login at a port."""

    def __init__(self, name: str, port: int, login: str, key: Path, scratch: Path):
        self.name, self.port, self.login = name, port, login
        self.options = [
            *("-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"),
            *("-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={scratch}/known"),
            *("-o", "LogLevel=ERROR"),
        ]

    def first_command_s(self) -> float:
        return timed(
            ["ssh", *self.options, "-p", str(self.port), f"{self.login}@127.0.0.1", "true"]
        )

    def scp_s(self, source: str, target: str) -> float:
        return timed(["scp", *self.options, "-P", str(self.port), source, target])

    def remote(self, path: Path) -> str:
        return f"{self.login}@127.0.0.1:{path}"


def measure(target: Target, big: Path, work: Path, megabytes: int, rounds: int, connects: int):
    connect = [target.first_command_s() for _ in range(connects)]
    upload = [target.scp_s(str(big), target.remote(work / "bench.bin")) for _ in range(rounds)]
    download = [
        target.scp_s(target.remote(work / "bench.bin"), str(big.with_suffix(".back")))
        for _ in range(rounds)
    ]
    return {
        "first_command_ms_median": round(statistics.median(connect) * 1000, 1),
        "first_command_ms_samples": [round(s * 1000, 1) for s in connect],
        "scp_upload_mb_per_s": round(megabytes / statistics.median(upload), 1),
        "scp_download_mb_per_s": round(megabytes / statistics.median(download), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--megabytes", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connects", type=int, default=10)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the plain sshd runs as the instance's account")

    hub = Hub(image_envs())
    sshd = None
    with tempfile.TemporaryDirectory(dir="/var/tmp") as scratch_name:
        scratch = Path(scratch_name)
        try:
            token = hub.add_user(USER)
            keygen(scratch / "client")
            public = (scratch / "client.pub").read_text()
            key = hub.atelier("POST", "/keypairs", token, json={"name": "b", "public_key": public})
            hub.start(USER, "lab", token, {"image": BASE, "spec": "cpu.2u4g"})
            access = {
                "enabled": True,
                "keypairs": [key.json()["id"]],
                "allowed_cidrs": ["127.0.0.1/32"],
            }
            hub.atelier("PATCH", f"/instances/{USER}/lab", token, json={"ssh": access})

            account = hub.account(USER)
            plain = scratch / "plain"
            plain.mkdir()
            keygen(plain / "host_key")
            (plain / "authorized_keys").write_text(public)
            plain_port = free_port()
            config = plain / "sshd_config"
            config.write_text(PLAIN_SSHD.format(port=plain_port, dir=plain))
            subprocess.run(["chown", "-R", account, str(plain)], check=True)
            scratch.chmod(0o711)
            sshd = subprocess.Popen(
                ["runuser", "-u", account, "--", "/usr/sbin/sshd", "-D", "-e", "-f", str(config)]
            )
            time.sleep(0.5)

            big = scratch / "big.bin"
            with open(big, "wb") as out:
                for _ in range(args.megabytes):
                    out.write(os.urandom(1024 * 1024))
            work = hub.home(USER, "lab") / "work"
            key_path = scratch / "client"
            targets = [
                Target("plain_sshd", plain_port, account, key_path, scratch),
                Target("gateway", hub.ssh_port, f"{USER}+lab", key_path, scratch),
            ]
            results = {
                t.name: measure(t, big, work, args.megabytes, args.rounds, args.connects)
                for t in targets
            }
        finally:
            if sshd is not None:
                sshd.terminate()
            hub.stop()

    plain, gateway = results["plain_sshd"], results["gateway"]
    upload = gateway["scp_upload_mb_per_s"] / plain["scp_upload_mb_per_s"]
    download = gateway["scp_download_mb_per_s"] / plain["scp_download_mb_per_s"]
    added_ms = gateway["first_command_ms_median"] - plain["first_command_ms_median"]
    report = {
        "benchmark": "ssh",
        "file_mb": args.megabytes,
        "rounds": args.rounds,
        "cpu_count": os.cpu_count(),
        **results,
        "throughput_ratio_upload": round(upload, 2),
        "throughput_ratio_download": round(download, 2),
        "added_connection_ms": round(added_ms, 1),
        "goals": {"throughput_ratio": ">= 0.8", "added_connection_ms": "<= 150"},
        "met": min(upload, download) >= 0.8 and added_ms <= 150,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
