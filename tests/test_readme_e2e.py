"""The README's examples, run as written against one real hub, in README order.

A reader on the hub's machine (alice, signed up and approved) runs each block with bash; the
README's example host and ports become the test hub's, `$TOKEN` comes from the README's own
`atelier token alice`, and the few placeholders are filled from the previous answer. After
a line that changes an instance the reader waits, as a person does, until no instance is
creating, starting or stopping (the answer says so; a PATCH of a creating instance is refused).
Each step builds on the ones before, as one reader's session does. Every fenced block is
either run here or listed in NOT_RUN with the reason; a new block that is neither fails
`test_every_block_is_run_or_listed`, so the README cannot grow an untested example."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import EXAMPLE, TORCH, environ_of, pid_of, sign_in, sign_up
from readme_blocks import README, Place, Where, alternatives, blocks, classify, unfilled

VENV_BIN = Path(sys.executable).parent
API = "The Atelier API, SDK and CLI"
SSH = "SSH access (VS Code, PyCharm, ssh, scp)"
SAVE = "Save as image"
TRAIN = "Training jobs"
DEPLOY = "Deployments"

# What bash runs before each block: the harness's shims, then the reader's shell state.
PRELUDE = r"""
set -eo pipefail
shopt -s extglob
trap 'echo "README command failed (status $?): $BASH_COMMAND" >&2' ERR
trap 'declare -p HUB API AUTH > "$STATE" 2>/dev/null || true' EXIT
curl() {  # as written, but an HTTP error fails the line; the answer is kept
  local rc=0
  command curl --fail-with-body -sS -o "$ANSWER" -w '%{http_code}' "$@" > "$ANSWER.status" || rc=$?
  cat "$ANSWER" | tee -a "$ANSWERS"; echo | tee -a "$ANSWERS"
  if [[ $rc == 0 && " $* " =~ " -X "(POST|PATCH|DELETE)" " ]]; then settle; fi
  return $rc
}
atelier() {  # the CLI as installed; after a change, wait as for curl
  command atelier "$@" || return
  if [[ $1 == instances && $2 != @(list|show) ]]; then settle; fi
}
settle() {  # a reader waits for what the answer says is under way (creating, stopping, ...)
  local deadline=$((SECONDS + 90))
  until command curl -sS -H "Authorization: token $TOKEN" "$INSTANCES" \
      | jq -e 'all(.instances[]; .status | IN("creating", "starting", "stopping") | not)' >/dev/null
  do
    ((SECONDS < deadline)) || { echo "instances still changing after 90 s" >&2; return 1; }
    sleep 0.5
  done
}
expect_http() {  # the README says this line answers that HTTP status
  local want=$1; shift
  if "$@"; then echo "expected HTTP $want, got success" >&2; return 1; fi
  [[ $(<"$ANSWER.status") == "$want" ]] || { echo "expected HTTP $want" >&2; return 1; }
}
expect_exit() {  # the README says this command ends with that exit status
  local want=$1 rc=0; shift
  "$@" || rc=$?
  [[ $rc == "$want" ]] || { echo "expected exit status $want, got $rc" >&2; return 1; }
}
in_terminal() {  # run it in a terminal, type a line of Python and exit; the Python must run
  local out rc=0
  out=$(printf 'python -c "print(6 * 7)"\nexit\n' | script -qec "$(printf '%q ' "$@")" /dev/null) \
    || rc=$?
  printf '%s\n' "$out"
  ((rc == 0)) || return $rc
  [[ $out == *42* ]] || { echo "python did not run in the terminal" >&2; return 1; }
}
keypair_id() { jq -r --arg name "$1" '.keypairs[] | select(.name == $name) | .id' "$ANSWER"; }
if [[ -f $STATE ]]; then source "$STATE"; fi
if [[ -v AUTH ]]; then AUTH="Authorization: token $TOKEN"; fi  # the reader's own token
"""


@dataclass
class Reader:
    """Someone following the README on the hub's machine: a HOME, a directory, a shell."""

    hub: object
    home: Path
    place: Place
    env: dict[str, str]
    tokens: dict[str, str] = field(default_factory=dict)
    keypair: str = ""  # the id of the key pair saved as ~/.ssh/atelier

    def bash(self, script: str, user: str = "alice", timeout: float = 300):
        env = {**self.env, "TOKEN": self.tokens.get(user, "")}
        env["JUPYTERHUB_API_TOKEN"] = env["TOKEN"]  # the CLI's token, as the README says
        return subprocess.run(
            ["bash", "-c", PRELUDE + script],
            cwd=self.home / "work",
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def answers(self) -> list[dict]:
        lines = Path(self.env["ANSWERS"]).read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


@dataclass(frozen=True)
class Step:
    """A block the reader runs: as whom, what is prepared first, which of its lines the README
    says end otherwise than with success (`wrap`), and placeholders from earlier answers."""

    where: Where
    user: str = "alice"
    before: Callable[[Reader], None] | None = None
    wrap: dict[str, str] = field(default_factory=dict)
    fill: dict[str, str] = field(default_factory=dict)
    after: Callable[[Reader], None] | None = None

    def script(self, reader: Reader, text: str) -> str:
        text = alternatives(reader.place.fill(text))
        for placeholder, value in self.fill.items():
            text = text.replace(placeholder, value.format(keypair=reader.keypair))
        lines = text.splitlines()
        for marker, prefix in self.wrap.items():
            hits = [i for i, line in enumerate(lines) if marker in line]
            assert len(hits) == 1, f"{marker!r} should be on one line of the block"
            lines[hits[0]] = prefix + lines[hits[0]]
        return "\n".join(lines) + "\n"

    def run(self, reader: Reader, text: str) -> None:
        script = self.script(reader, text)
        assert not unfilled(script), f"unfilled placeholders {unfilled(script)} in:\n{script}"
        result = reader.bash(script, self.user)
        assert result.returncode == 0, f"{script}\n--- output:\n{result.stdout}\n{result.stderr}"


class PythonInInstance(Step):
    """The SDK block runs in a process with alice's exp-2's environment, as its account."""

    def run(self, reader: Reader, text: str) -> None:
        hub, instance = reader.hub, "exp-2"
        code = reader.place.fill(text)
        assert not unfilled(code), code
        environ = environ_of(pid_of(hub, "alice", instance))
        result = subprocess.run(
            ["/usr/sbin/runuser", "-u", hub.account("alice"), "--", "/usr/bin/env", "-i"]
            + [f"{key}={value}" for key, value in environ.items()]
            + ["python", "-"],
            input=code,
            cwd=hub.home("alice", instance),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, f"{code}\n--- output:\n{result.stdout}\n{result.stderr}"


class SshConfig(Step):
    """The `~/.ssh/config` block goes into the reader's ~/.ssh/config; then `ssh atelier-exp-1`
    works, as the README says."""

    def run(self, reader: Reader, text: str) -> None:
        config = reader.place.fill(text).replace("~/", f"{reader.home}/")
        assert not unfilled(config), config
        (reader.home / ".ssh" / "config").write_text(config)
        result = reader.bash("ssh atelier-exp-1 true\n")
        assert result.returncode == 0, f"{config}\n--- output:\n{result.stdout}\n{result.stderr}"


def public_key(reader: Reader) -> None:
    """The reader has an ed25519 key of their own (`cat ~/.ssh/id_ed25519.pub`)."""
    key = reader.home / ".ssh" / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)


def save_generated_key(reader: Reader) -> None:
    """As the SSH section says: the generated private key is saved as ~/.ssh/atelier."""
    generated = [answer for answer in reader.answers() if "private_key" in answer]
    assert generated, "no answer held a private_key"
    key = reader.home / ".ssh" / "atelier"
    key.write_text(generated[-1]["private_key"])
    key.chmod(0o600)
    reader.keypair = generated[-1]["id"]


def other_members(reader: Reader) -> None:
    """The workspace's other members have accounts."""
    for name in ("bob", "carol"):
        reader.hub.add_user(name)


def start(instance: str, options: dict | None = None) -> Callable[[Reader], None]:
    """The instance the block uses is running (started as the README's REST block does), and
    the Atelier API has seen it (within about a second of the hub, as the README says)."""

    def started(reader: Reader) -> None:
        token = reader.tokens["alice"]
        reader.hub.start("alice", instance, token, options)
        seen = f"/instances/alice/{instance}"
        reader.hub.wait_for(lambda: reader.hub.atelier("GET", seen, token).ok, 10, seen)

    return started


def example_in(*instances: str):
    """The example training script as `train.py` in alice's instances' volumes, as the
    README asks a reader to copy it."""

    def copied(reader: Reader) -> None:
        for instance in instances:
            reader.hub.upload("alice", instance, EXAMPLE, "train.py")

    return copied


def requests_in(instance: str):
    """Three OIP v2 request bodies in the instance's `requests/`, for batch inference."""

    def written(reader: Reader) -> None:
        folder = reader.hub.volume("alice", instance) / "requests"
        folder.mkdir()
        for x in (1.0, 2.0, 3.0):
            body = {"inputs": [{"name": "x", "shape": [1, 1], "datatype": "FP32", "data": [x]}]}
            (folder / f"{x:g}.json").write_text(json.dumps(body))
        for path in (folder, *folder.iterdir()):
            os.chown(path, *reader.hub.volume_owner("alice"))

    return written


def answered(reader: Reader) -> None:
    """The batch job ends with an answer per request, as the README says."""
    token, path = reader.tokens["alice"], "/jobs/alice/score"
    ended = reader.hub.wait_for(
        lambda: (
            (job := reader.hub.atelier("GET", path, token).json())["status"]
            in ("completed", "failed")
            and job
        ),
        180,
        "the batch job",
    )
    assert ended["status"] == "completed", ended
    answers = reader.hub.volume("alice", "exp-1") / "answers"
    assert sorted(p.name for p in answers.iterdir()) == [
        "1.json",
        "2.json",
        "3.json",
        "summary.json",
    ]


def transfers(reader: Reader) -> None:
    """A file to copy, and the gateway's host key accepted (as answering ssh's prompt)."""
    (reader.home / "work" / "data.tar").write_bytes(os.urandom(1 << 20))
    port = str(reader.hub.ssh_port)
    keys = subprocess.run(
        ["ssh-keyscan", "-p", port, "127.0.0.1"], capture_output=True, text=True, check=True
    )
    (reader.home / ".ssh" / "known_hosts").write_text(keys.stdout)


STEPS = [
    Step(Where("Instances over REST", "HUB=")),
    Step(Where(API, "API=")),
    Step(Where(API, "/tokens")),
    Step(
        Where(API, "$API/keypairs"),
        before=public_key,
        fill={"<id>": "$(keypair_id laptop)"},
        after=save_generated_key,
    ),
    Step(
        Where(API, "$API/workspaces"),
        user="admin",
        before=other_members,
        wrap={"-X DELETE $API/workspaces/vision": "expect_http 409 "},
    ),
    Step(Where(API, '"visibility": "private"'), user="admin"),
    PythonInInstance(Where(API, "from atelier.sdk import Client"), before=start("exp-2")),
    Step(Where(API, "atelier instances create")),
    Step(
        Where("Work volumes", "volume/expand"),
        before=start("exp-1", {"image": TORCH, "spec": "cpu.2u8g"}),
    ),
    PythonInInstance(Where(SAVE, "client.save_image(")),
    Step(
        Where(SAVE, "$API/instances/alice/exp-2/images"),
        fill={"<operation id>": '$(jq -r .id "$ANSWER")'},
    ),
    Step(Where(SAVE, "atelier images save")),
    Step(Where(SAVE, "/atelier/images")),
    PythonInInstance(Where(TRAIN, "client.create_job("), before=example_in("exp-1", "exp-2")),
    Step(
        Where(TRAIN, "$API/jobs -d"),
        wrap={"-X POST $API/jobs/alice/ddp-2/resume": "expect_http 409 "},
    ),
    Step(Where(TRAIN, "atelier jobs submit")),
    PythonInInstance(Where(DEPLOY, "client.create_deployment(")),
    Step(
        Where(DEPLOY, "atelier deployments create line-3"),
        wrap={"-X POST $API/deployments/alice/line-3/rollback": "expect_http 409 "},
    ),
    Step(Where(DEPLOY, '"batch": {"model"'), before=requests_in("exp-1"), after=answered),
    Step(Where(SSH, '"ssh": {"enabled"'), fill={"<key pair id>": "{keypair}"}),
    Step(
        Where(SSH, "scp -i"),
        before=transfers,
        wrap={
            "# a shell (with a pty)": "in_terminal ",
            "exit 3'": "expect_exit 3 ",
            "-N -L": "expect_exit 124 timeout 5 ",  # a tunnel holds until ended
        },
    ),
    SshConfig(Where(SSH, "Host atelier-exp-1")),
]

NOT_RUN = {
    Where("Atelier", "make run"): "make run is tests/test_newcomer_e2e.py's (a fresh copy, "
    "minutes); make test is this suite",
    Where("Atelier", "Atelier is at"): "what make run prints, not a command",
    Where("Signing in with GitHub, GitLab or an OIDC provider", "kind: oidc"): "settings for "
    "a real OAuth provider (tests/test_oidc_e2e.py signs in through a test provider)",
    Where("Accelerators", "devices:"): "a GPU inventory; there is no GPU here (the test hubs "
    "list fake A100s this way; tests/test_devices.py)",
    Where("The `atelier` command", "atelier run"): "a synopsis ([options], NAME, a|b); its "
    "`atelier token alice` runs here for $TOKEN, the rest is tests/test_cli.py's",
    Where("Configuration", "invalid configuration"): "what a bad configuration prints "
    "(tests/test_settings.py)",
    Where("Benchmarks", "benchmarks/spawn.py"): "a benchmark: minutes of load",
    Where("Backends", "[project.entry-points"): "a distribution's pyproject.toml, not a command "
    "(tests/test_backends.py finds the local and the test backend through such entry points)",
    Where("Backends", "ATELIER_CONTRACT_BACKENDS"): "the contract suite itself, which make test "
    "runs (every backend)",
    Where("Running on Docker", "config/docker.yaml make run"): "tests/test_newcomer_e2e.py "
    "runs it as written, on the tests' own engine (DOCKER_HOST); there is no systemd here",
    Where("Save as image on Docker", "registry.example.org"): "settings for an external "
    "registry (tests/test_docker_snapshots.py checks how they are read)",
    Where("Layout", "hub/"): "the source tree, not a command",
    Where(TRAIN, "training.init_process_group()"): "a training script's lines, not a whole "
    "one: examples/train_ddp.py runs them (tests/test_training.py, tests/test_jobs_e2e.py)",
}


def test_every_block_is_run_or_listed():
    found = blocks(README.read_text())
    _, problems = classify(found, [step.where for step in STEPS] + list(NOT_RUN))
    assert not problems, "\n".join(problems)


def test_a_new_example_neither_run_nor_listed_is_caught():
    grown = README.read_text() + "\n### Backups\n```sh\natelier backup --to /srv\n```\n"
    _, problems = classify(blocks(grown), [step.where for step in STEPS] + list(NOT_RUN))
    line = len(grown.splitlines()) - 2
    assert problems == [
        f"README.md:{line} (Backups) ```sh atelier backup --to /srv: neither run by the README "
        "test nor listed as not runnable"
    ]


@pytest.fixture(scope="module")
def reader(hub, tmp_path_factory) -> Reader:
    """alice signs up and an admin approves her; her shell is on the hub's machine, outside
    the project, with the hub's configuration, and gets $TOKEN from `atelier token alice`."""
    password = "a-long-enough-password"
    sign_up(hub, "alice", password)
    admin = sign_in(hub, "admin", hub.admin_password)
    admin.get(f"{hub.url}/hub/authorize/alice", timeout=30)
    assert "Your instances" in sign_in(hub, "alice", password).get(f"{hub.url}/hub/home").text
    home = tmp_path_factory.mktemp("reader")
    (home / ".ssh").mkdir(mode=0o700)
    (home / ".ssh" / "config").touch()
    (home / "work").mkdir()
    (home / "bin").mkdir()
    for tool in ("ssh", "scp"):  # OpenSSH finds ~/.ssh from the passwd entry, not from $HOME
        shim = home / "bin" / tool
        files = f"-F {home}/.ssh/config -o UserKnownHostsFile={home}/.ssh/known_hosts"
        shim.write_text(f'#!/bin/sh\nexec /usr/bin/{tool} {files} "$@"\n')
        shim.chmod(0o755)
    env = {key: value for key, value in os.environ.items() if not key.startswith("ATELIER_")}
    env.update(
        HOME=str(home),
        PATH=f"{home / 'bin'}:{VENV_BIN}:{os.environ['PATH']}",
        ATELIER_CONFIG=str(hub.config),  # how this hub was started
        ANSWER=str(home / "answer"),
        ANSWERS=str(home / "answers"),
        STATE=str(home / "state"),
        INSTANCES=f"{hub.url}/services/atelier/api/v1/instances",
    )
    place = Place(port=hub.port, ssh_port=hub.ssh_port, image=TORCH)
    reader = Reader(hub, home, place, env)
    assert "atelier token alice" in README.read_text()
    for user in ("alice", "admin"):
        minted = reader.bash(f"atelier token {user}\n")
        assert minted.returncode == 0, minted.stderr
        reader.tokens[user] = minted.stdout.strip()
    return reader


@pytest.mark.e2e
@pytest.mark.parametrize("step", STEPS, ids=[f"{s.where.section}: {s.where.marker}" for s in STEPS])
def test_readme_example_runs(reader, step):
    pairs, _ = classify(blocks(README.read_text()), [step.where])
    assert step.where in pairs, f"{step.where} is no longer one block of the README"
    if step.before:
        step.before(reader)
    step.run(reader, pairs[step.where].text)
    if step.after:
        step.after(reader)
