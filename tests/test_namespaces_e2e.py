"""Instances cannot make namespaces (review of issue 10, finding 2): with user namespaces
enabled on the host, `unshare -Urm` in one user's instance would copy every mount of the host,
other users' homes and volumes included, and keep them mounted after their owners stop."""

import os

import pytest
from conftest import BASE, TORCH
from test_limits_e2e import run_in

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="instances of other accounts need root"),
]
SPEC = {"spec": "cpu.2u4g", "volume_gb": 1}

NAMESPACES = """
import ctypes, os, platform, subprocess
unshare = subprocess.run(["/usr/bin/unshare", "-Urm", "true"], capture_output=True, text=True)
print(unshare.returncode, unshare.stderr.strip())
libc = ctypes.CDLL(None, use_errno=True)
clone = {"x86_64": 56, "aarch64": 220}[platform.machine()]
pid = libc.syscall(clone, 0x10000000 | 17, 0, 0, 0, 0)  # CLONE_NEWUSER | SIGCHLD
if pid == 0:
    os._exit(0)
print("clone", os.strerror(ctypes.get_errno()) if pid < 0 else os.waitpid(pid, 0) and "made")
print("unshare", os.strerror(ctypes.get_errno()) if libc.unshare(0x10000000) else "made")
"""

ORDINARY_WORK = """
import multiprocessing, subprocess, sys, threading, warnings
with warnings.catch_warnings():  # torch without numpy warns "Failed to initialize NumPy"
    warnings.simplefilter("error")
    import torch, numpy, pandas, matplotlib, sklearn, tqdm  # what the PyTorch image ships
pip = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, text=True)
print("pip", pip.returncode)
results = []
threads = [threading.Thread(target=results.append, args=(n,)) for n in range(4)]
[t.start() for t in threads] and [t.join() for t in threads]
print("threads", sorted(results))
with multiprocessing.Pool(2) as pool:
    print("pool", pool.map(abs, [-1, -2]))
print("torch", int(torch.ones(64, 64).matmul(torch.ones(64, 64)).sum()))
print("numpy", torch.ones(2).numpy().sum(), pandas.Series([1, 2]).sum())
"""


def test_an_instance_cannot_make_namespaces_and_ordinary_work_still_runs(hub):
    token = hub.add_user("nina")
    created = hub.atelier("POST", "/instances", token, json={"name": "t", "image": TORCH, **SPEC})
    assert created.json()["status"] == "running", created.text
    refused = run_in(hub, "nina", "t", token, NAMESPACES).splitlines()
    assert refused[0] == "1 unshare: unshare failed: Operation not permitted"
    assert refused[1:] == ["clone Operation not permitted", "unshare Operation not permitted"]
    ordinary = run_in(hub, "nina", "t", token, ORDINARY_WORK).splitlines()
    assert ordinary == [
        "pip 0",
        "threads [0, 1, 2, 3]",
        "pool [1, 2]",
        "torch 262144",
        "numpy 2.0 3",
    ]


PIN_THE_HOSTS_MOUNTS = """
import subprocess, time
pin = subprocess.Popen(["/usr/bin/unshare", "-Urm", "sleep", "300"], stderr=subprocess.PIPE)
time.sleep(1)
print(pin.poll(), pin.stderr.read().decode().strip() if pin.poll() is not None else "")
"""


def test_another_users_instance_cannot_keep_a_stopped_instance_from_starting(hub):
    victim, attacker = hub.add_user("vera"), hub.add_user("mallory")
    for token in (victim, attacker):
        options = {"name": "i", "image": BASE, **SPEC}
        created = hub.atelier("POST", "/instances", token, json=options)
        assert created.json()["status"] == "running", created.text
    pinned = run_in(hub, "mallory", "i", attacker, PIN_THE_HOSTS_MOUNTS)
    assert hub.atelier("POST", "/instances/vera/i/stop", victim).json()["status"] == "stopped"
    started = hub.atelier("POST", "/instances/vera/i/start", victim)
    assert started.ok and started.json()["status"] == "running", started.text
    assert pinned.strip() == "1 unshare: unshare failed: Operation not permitted"
