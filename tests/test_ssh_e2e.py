"""SSH through the gateway with Debian's OpenSSH client (ssh, scp, sftp) into real instances."""

import asyncio
import contextlib
import hashlib
import json
import os
import pty
import re
import select
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests
from conftest import BASE, Hub, environ_of, free_port, pid_of
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

pytestmark = pytest.mark.e2e
USER, OTHER = "sshdev", "sshother"
SPEC = "cpu.2u4g"


class Client:
    """Debian's OpenSSH client with one key, talking to the test hub's gateway."""

    def __init__(self, hub, directory, name: str):
        self.hub = hub
        self.key = directory / name
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True
        )
        self.public = self.key.with_suffix(".pub").read_text()
        self.known_hosts = directory / "known_hosts"

    def options(self) -> list[str]:
        return [
            *("-i", str(self.key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"),
            *("-o", "StrictHostKeyChecking=accept-new"),
            *("-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "LogLevel=ERROR"),
            *("-o", "ConnectTimeout=60"),  # the handshake too: a port that never answers ends
        ]

    def argv(self, login: str, *options: str) -> list[str]:
        """`ssh` with this key and `options` to `login` at the gateway; add the command."""
        port = str(self.hub.ssh_port)
        return ["ssh", *self.options(), "-p", port, *options, f"{login}@127.0.0.1"]

    def ssh(self, login: str, *command: str, **kwargs) -> subprocess.CompletedProcess:
        kwargs = {"capture_output": True, "text": True, "timeout": 60, **kwargs}
        return subprocess.run([*self.argv(login), *command], **kwargs)

    def tunnel(self, login: str, *forwarding: str) -> subprocess.Popen:
        """`ssh -N` with these forwarding options (-L, -D), running until killed."""
        return subprocess.Popen(
            self.argv(login, "-N", "-o", "ExitOnForwardFailure=yes", *forwarding)
        )

    def forward(self, login: str, local: int, remote: int) -> subprocess.Popen:
        """`ssh -N -L local:127.0.0.1:remote`, running until killed."""
        return self.tunnel(login, "-L", f"{local}:127.0.0.1:{remote}")


def reachable_over_ssh(hub, user: str, name: str, directory: Path) -> dict:
    """`user`'s new instance `name` (a 1 GB volume), running, reachable over SSH with a key."""
    token = hub.add_user(user)
    client = Client(hub, directory, "laptop")
    key = hub.atelier(
        "POST", "/keypairs", token, json={"name": "laptop", "public_key": client.public}
    )
    assert key.status_code == 201, key.text
    body = {"name": name, "image": BASE, "spec": "cpu.2u4g", "volume_gb": 1}
    created = hub.atelier("POST", "/instances", token, json=body)
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "running"
    access = {"enabled": True, "keypairs": [key.json()["id"]], "allowed_cidrs": ["127.0.0.0/8"]}
    changed = hub.atelier("PATCH", f"/instances/{user}/{name}", token, json={"ssh": access})
    assert changed.status_code == 200, changed.text
    return {"token": token, "client": client, "directory": directory}


@pytest.fixture(scope="module")
def setup(hub, tmp_path_factory):
    directory = tmp_path_factory.mktemp("ssh")
    token, other_token = hub.add_user(USER), hub.add_user(OTHER)
    client, stranger, other = (Client(hub, directory, n) for n in ("laptop", "stranger", "other"))
    key = hub.atelier(
        "POST", "/keypairs", token, json={"name": "laptop", "public_key": client.public}
    )
    assert key.status_code == 201, key.text
    spare = hub.atelier("POST", "/keypairs", token, json={"name": "spare", "generate": True})
    assert spare.status_code == 201, spare.text
    theirs = {"name": "theirs", "public_key": other.public}
    assert hub.atelier("POST", "/keypairs", other_token, json=theirs).status_code == 201
    for owner, owner_token in ((USER, token), (OTHER, other_token)):
        hub.start(owner, "lab", owner_token, {"image": BASE, "spec": SPEC})
    access = {"enabled": True, "keypairs": [key.json()["id"]], "allowed_cidrs": ["127.0.0.0/8"]}
    changed = hub.atelier("PATCH", f"/instances/{USER}/lab", token, json={"ssh": access})
    assert changed.status_code == 200, changed.text
    return {
        "token": token,
        "other_token": other_token,
        "client": client,
        "stranger": stranger,
        "other": other,
        "key": key.json(),
        "spare": spare.json(),
        "directory": directory,
    }


def login_events(hub, since_id: int = 0) -> list[dict]:
    events = hub.atelier("GET", "/audit?action=sshLogin&limit=500").json()["events"]
    return [e for e in reversed(events) if e["id"] > since_id]


def audited_logins(hub, count: int) -> list[dict]:
    """The first `count` login events, once written: a refusal is audited (and counted
    against the address) when the gateway sees the connection close, after the client has
    already exited."""
    return hub.wait_for(
        lambda: (events := login_events(hub))[count - 1 :] and events, 30, f"{count} logins"
    )


def last_event_id(hub) -> int:
    events = hub.atelier("GET", "/audit?limit=1").json()["events"]
    return events[0]["id"] if events else 0


def test_the_instance_shows_how_to_connect(hub, setup):
    instance = hub.atelier("GET", f"/instances/{USER}/lab", setup["token"]).json()
    assert instance["ssh"]["enabled"] is True
    assert instance["ssh"]["keypairs"] == [setup["key"]["id"]]
    assert (
        instance["ssh"]["command"]
        == f"ssh -i ~/.ssh/atelier -p {hub.ssh_port} {USER}+lab@localhost"
    )
    assert f"User {USER}+lab" in instance["ssh"]["config"]


def test_exec_runs_in_the_instance_environment_with_exit_codes(hub, setup):
    client = setup["client"]
    lab_pid = hub.servers(USER)["lab"]["state"]["pid"]
    lab_env = environ_of(lab_pid)
    shell = client.ssh(
        f"{USER}+lab",
        'echo "$(id -un) $PWD $HOME $MEM_LIMIT $VIRTUAL_ENV"; '
        'python -c "import sys; print(sys.prefix)"; '
        'test -n "$JUPYTERHUB_API_TOKEN" && echo token; echo hi > work/from-ssh.txt; exit 7',
    )
    assert shell.returncode == 7, shell.stderr
    first, prefix, token = shell.stdout.splitlines()
    assert first.split() == [
        lab_env["USER"],
        lab_env["HOME"],
        lab_env["HOME"],
        lab_env["MEM_LIMIT"],
        lab_env["VIRTUAL_ENV"],
    ]
    assert prefix == lab_env["VIRTUAL_ENV"]
    assert token == "token"
    assert shell.stderr == ""
    # the same work volume JupyterLab sees
    lab = requests.get(
        f"{hub.url}/user/{USER}/lab/api/contents/work/from-ssh.txt",
        headers={"Authorization": f"token {setup['token']}"},
        timeout=30,
    )
    assert lab.json()["content"] == "hi\n"
    assert client.ssh(f"{USER}+lab", "true").returncode == 0
    assert client.ssh(f"{USER}+lab", "kill -9 $$").returncode == 255  # killed by a signal


def in_a_terminal(argv: list[str], typed: bytes, marker: bytes) -> tuple[bytes, int]:
    """Run `argv` (ssh -tt) in a real pseudo-terminal, type `typed`, read until `marker`;
    then type `exit 5`: (what the terminal showed, the exit status)."""
    pid, terminal = pty.fork()
    if pid == 0:
        os.execvp(argv[0], argv)
    output = b""
    os.write(terminal, typed)
    deadline = time.monotonic() + 30
    while marker not in output and time.monotonic() < deadline:
        if select.select([terminal], [], [], 0.5)[0]:
            try:
                output += os.read(terminal, 4096)
            except OSError:
                break
    assert marker in output, output.decode(errors="replace")
    os.write(terminal, b"exit 5\n")
    _, status = os.waitpid(pid, 0)
    os.close(terminal)
    return output, os.waitstatus_to_exitcode(status)


def test_a_commands_whole_output_comes_back_before_its_exit_status(hub, setup):
    """The instance's sshd may send the last output after the exit status; none is lost."""
    for _ in range(30):
        result = setup["client"].ssh(f"{USER}+lab", "command -v python; echo end; exit 3")
        assert (result.stdout.splitlines()[-1:], result.returncode) == (["end"], 3)


def test_an_interactive_shell_gets_a_pty(hub, setup):
    argv = setup["client"].argv(f"{USER}+lab", "-tt")
    typed = b"tty; echo answer=$((6*7)); stty size\n"
    output, status = in_a_terminal(argv, typed, b"answer=42")
    assert b"/dev/pts/" in output
    assert status == 5


# set for one terminal or one SSH session only, not part of the instance's environment
SESSION_ONLY = {"TERM", "COLUMNS", "LINES", "PYXTERM_DIMENSIONS", "JUPYTER_SERVER_ROOT"}
SESSION_ONLY |= {"JUPYTER_SERVER_URL", "SSH_CLIENT", "SSH_CONNECTION", "SSH_TTY", "LOGNAME"}
SESSION_ONLY |= {"MAIL", "OLDPWD", "_"}


def test_ssh_shells_see_the_image_environment(hub, setup):
    """Interactive or not, with a pty or not: `python` is the image's, PATH is JupyterLab's."""
    client, login = setup["client"], f"{USER}+lab"
    lab = environ_of(pid_of(hub, USER, "lab"))
    python = f"{lab['VIRTUAL_ENV']}/bin/python"
    asked = "command -v python; echo PATH=$PATH; echo done=$((6*7))"
    interactive, _ = in_a_terminal(client.argv(login, "-tt"), f"{asked}\n".encode(), b"done=42")
    with_command = subprocess.run(
        [*client.argv(login, "-tt"), asked], capture_output=True, text=True, timeout=60
    )
    script_on_stdin = client.ssh(login, input=f"{asked}\n")  # no pty, no command
    for output in (interactive.decode(), with_command.stdout, script_on_stdin.stdout):
        lines = re.sub(r"\x1b\[[?0-9;]*[A-Za-z]|\r", "", output).splitlines()
        assert python in lines, output
        assert f"PATH={lab['PATH']}" in lines, output


def lab_terminal(hub, token: str, typed: str) -> None:
    """Type `typed` into a new JupyterLab terminal of USER's instance `lab`."""
    lab = f"{hub.url}/user/{USER}/lab"
    headers = {"Authorization": f"token {token}"}
    name = requests.post(f"{lab}/api/terminals", headers=headers, timeout=30).json()["name"]

    async def type_in() -> None:
        url = f"ws://127.0.0.1:{hub.port}/user/{USER}/lab/terminals/websocket/{name}"
        connection = await websocket_connect(HTTPRequest(url, headers=headers))
        await connection.write_message(json.dumps(["stdin", typed + "\r"]))
        await connection.read_message()
        connection.close()

    asyncio.run(type_in())


def saved_environment(home: Path, name: str, hub) -> dict[str, str]:
    path = home / name
    hub.wait_for(path.exists, 30, f"{name} written")
    items = path.read_bytes().decode().split("\0")
    return {k: v for k, v in (i.split("=", 1) for i in items if "=" in i) if k not in SESSION_ONLY}


def test_an_ssh_terminal_has_the_environment_of_a_jupyterlab_terminal(hub, setup):
    home = Path(environ_of(pid_of(hub, USER, "lab"))["HOME"])
    save = "env -0 > ~/.{0}.part && mv ~/.{0}.part ~/{0}.env"
    lab_terminal(hub, setup["token"], save.format("lab-terminal"))
    typed = f"{save.format('ssh-terminal')}; echo done=$((6*7))\n".encode()
    in_a_terminal(setup["client"].argv(f"{USER}+lab", "-tt"), typed, b"done=42")
    in_lab = saved_environment(home, "lab-terminal.env", hub)
    over_ssh = saved_environment(home, "ssh-terminal.env", hub)
    assert over_ssh == in_lab
    lab = environ_of(pid_of(hub, USER, "lab"))
    assert (
        over_ssh["PATH"]
        == lab["PATH"]
        == f"{lab['HOME']}/.local/bin:{lab['VIRTUAL_ENV']}/bin:/usr/local/bin:/usr/bin:/bin"
    )
    for name in ("VIRTUAL_ENV", "MEM_LIMIT", "CPU_LIMIT", "JUPYTERHUB_API_TOKEN", "HOME"):
        assert over_ssh[name] == lab[name]


def test_sftp_and_scp_copy_files_intact(hub, setup):
    client, directory = setup["client"], setup["directory"]
    big = directory / "big.bin"
    big.write_bytes(os.urandom(100 * 1024 * 1024))
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    port, login = str(hub.ssh_port), f"{USER}+lab@127.0.0.1"
    scp = subprocess.run(
        ["scp", *client.options(), "-P", port, str(big), f"{login}:work/big.bin"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert scp.returncode == 0, scp.stderr
    remote = client.ssh(f"{USER}+lab", "sha256sum work/big.bin")
    assert remote.stdout.split()[0] == digest
    back = directory / "back.bin"
    scp = subprocess.run(
        ["scp", *client.options(), "-P", port, f"{login}:work/big.bin", str(back)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert scp.returncode == 0, scp.stderr
    assert hashlib.sha256(back.read_bytes()).hexdigest() == digest

    small = directory / "notes.txt"
    small.write_text("sftp works\n")
    batch = directory / "batch"
    batch.write_text(f"put {small} work/notes.txt\nget work/notes.txt {directory}/notes-back.txt\n")
    sftp = subprocess.run(
        ["sftp", *client.options(), "-P", port, "-b", str(batch), login],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sftp.returncode == 0, sftp.stderr
    assert (directory / "notes-back.txt").read_text() == "sftp works\n"


def lab_port(hub) -> int:
    """The loopback port the instance's JupyterLab listens on."""
    lab_url = environ_of(hub.servers(USER)["lab"]["state"]["pid"])["JUPYTERHUB_SERVICE_URL"]
    return int(lab_url.rsplit(":", 1)[1].split("/", 1)[0])


def wait_for_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port}")


def test_local_forwarding_reaches_the_instance_jupyterlab(hub, setup):
    local = free_port()
    tunnel = setup["client"].forward(f"{USER}+lab", local, lab_port(hub))
    try:
        wait_for_port(local)
        status = requests.get(f"http://127.0.0.1:{local}/user/{USER}/lab/api", timeout=30)
        assert status.status_code == 200
        assert "version" in status.json()
    finally:
        tunnel.kill()


def socks5_get(proxy_port: int, port: int, path: str) -> bytes:
    """An HTTP GET to 127.0.0.1:port inside the instance, through `ssh -D`'s SOCKS5 proxy."""
    with socket.create_connection(("127.0.0.1", proxy_port), timeout=30) as sock:
        sock.sendall(b"\x05\x01\x00")
        assert sock.recv(2) == b"\x05\x00"
        sock.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + port.to_bytes(2, "big"))
        assert sock.recv(10)[1] == 0  # succeeded
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def test_dynamic_forwarding_reaches_the_instance(hub, setup):
    proxy = free_port()
    tunnel = setup["client"].tunnel(f"{USER}+lab", "-D", str(proxy))
    try:
        wait_for_port(proxy)
        answer = socks5_get(proxy, lab_port(hub), f"/user/{USER}/lab/api")
        assert answer.startswith(b"HTTP/1.1 200")
        assert b'"version"' in answer
    finally:
        tunnel.kill()


def test_the_vscode_pattern_bash_script_on_stdin_then_forward(hub, setup):
    """VS Code Remote-SSH: `ssh -T host bash` runs a script that starts a server and says
    where it listens; then a second connection forwards a local port to it."""
    client = setup["client"]
    script = (
        "python - <<'EOF' &\n"
        "import http.server, socketserver\n"
        "server = socketserver.TCPServer(('127.0.0.1', 0), http.server.SimpleHTTPRequestHandler)\n"
        "print(f'listeningOn=={server.server_address[1]}==', flush=True)\n"
        "server.serve_forever()\n"
        "EOF\n"
        "wait\n"
    )
    server = subprocess.Popen(
        [*client.argv(f"{USER}+lab", "-T"), "bash"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    server.stdin.write(script)
    server.stdin.close()
    line = server.stdout.readline()
    assert line.startswith("listeningOn=="), line
    remote = int(line.split("==")[1])
    local = free_port()
    tunnel = client.forward(f"{USER}+lab", local, remote)
    try:
        wait_for_port(local)
        listing = requests.get(f"http://127.0.0.1:{local}/", timeout=30)
        assert listing.status_code == 200
        assert "work/" in listing.text  # served from the instance's directory
    finally:
        tunnel.kill()
        server.kill()


def refused(result: subprocess.CompletedProcess) -> bool:
    return result.returncode == 255 and "Permission denied (publickey)" in result.stderr


def test_every_refusal_is_refused_and_audited(hub, setup):
    client, stranger, other = setup["client"], setup["stranger"], setup["other"]
    token, key = setup["token"], setup["key"]
    since = last_event_id(hub)
    assert refused(stranger.ssh(f"{USER}+lab", "true"))  # a key nobody registered
    assert refused(other.ssh(f"{USER}+lab", "true"))  # another user's key
    assert refused(client.ssh(f"{OTHER}+lab", "true"))  # another user's instance
    assert refused(client.ssh(f"{USER}+nothere", "true"))
    assert refused(client.ssh(USER, "true"))  # not <user>+<instance>
    only_password = subprocess.run(
        [
            *client.argv(
                f"{USER}+lab", "-o", "PreferredAuthentications=password,keyboard-interactive"
            )
        ]
        + ["true"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused(only_password)

    # settings change while the instance runs, and count for the next connection at once
    def change(**access):
        response = hub.atelier("PATCH", f"/instances/{USER}/lab", token, json={"ssh": access})
        assert response.status_code == 200, response.text

    change(allowed_cidrs=["10.0.0.0/8"])
    assert refused(client.ssh(f"{USER}+lab", "true"))
    change(allowed_cidrs=[])  # empty: the admin's default, which is nobody here
    assert refused(client.ssh(f"{USER}+lab", "true"))
    change(allowed_cidrs=["127.0.0.1/32"], keypairs=[setup["spare"]["id"]])
    assert refused(client.ssh(f"{USER}+lab", "true"))
    change(keypairs=[key["id"]], enabled=False)
    assert refused(client.ssh(f"{USER}+lab", "true"))
    change(enabled=True)
    assert client.ssh(f"{USER}+lab", "true").returncode == 0

    events = login_events(hub, since)
    failures = [e for e in events if e["result"] == "failure"]
    reasons = [e["reason"] for e in failures]
    assert len(failures) == 9, reasons
    assert all(e["source_ip"] == "127.0.0.1" and e["action"] == "sshLogin" for e in events)
    assert "not one of the user's key pairs" in reasons[0]
    assert failures[0]["actor"] == "unknown"
    assert failures[1]["actor"] == OTHER  # whose key it was
    assert failures[2]["owner"] == OTHER and failures[2]["actor"] == USER
    assert "no such instance" in reasons[3]
    assert "is not <user>+<instance>" in reasons[4]
    assert "address 127.0.0.1 is not in" in reasons[5]
    assert "address 127.0.0.1 is not in" in reasons[6]
    assert "not allowed for this instance" in reasons[7]
    assert "SSH is disabled" in reasons[8]
    assert key["fingerprint"] in reasons[2]
    successes = [e for e in events if e["result"] == "success"]
    assert [(e["reason"], e["resource"]) for e in successes] == [
        (key["fingerprint"], f"{USER}/lab")
    ]


def endpoint_socket(pid: int) -> Path:
    """The SSH endpoint socket that an instance's JupyterLab process listens on."""
    held = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):  # closed since the listing
            held.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()  # Num RefCount Protocol Flags Type St Inode Path
        if len(fields) == 8 and f"socket:[{fields[6]}]" in held and fields[7].endswith(".sock"):
            return Path(fields[7])
    raise AssertionError(f"process {pid} listens on no SSH endpoint")


def test_a_user_cannot_point_their_endpoint_at_another_users(hub, setup):
    """The hijack: from inside their own instance, a user swaps their endpoint's socket for a
    link to another user's; the gateway (root) would log them in as whoever answers."""
    client = setup["client"]
    own, victims = (endpoint_socket(pid_of(hub, user, "lab")) for user in (USER, OTHER))
    victim_home = environ_of(pid_of(hub, OTHER, "lab"))["HOME"]
    swap = client.ssh(f"{USER}+lab", f"ln -sfn {victims} {own}")
    assert swap.returncode != 0  # the socket lies in root's directory
    assert "Permission denied" in swap.stderr
    shell = client.ssh(f"{USER}+lab", f"id -un; touch {victim_home}/pwned")
    assert shell.stdout.split() == [environ_of(pid_of(hub, USER, "lab"))["USER"]]
    assert not Path(victim_home, "pwned").exists()


@pytest.fixture
def swapped_endpoint(hub, setup):
    """Put another endpoint's socket where the instance's own should be, as root (no user
    can), then put the instance's own back."""
    own = endpoint_socket(pid_of(hub, USER, "lab"))
    saved = own.with_name("saved.sock")
    own.rename(saved)

    def swap(target: Path, link) -> None:
        own.unlink(missing_ok=True)
        link(target, own)

    yield swap
    own.unlink(missing_ok=True)
    saved.rename(own)


@pytest.mark.parametrize(
    ("victim", "link"),
    [
        ((OTHER, "lab"), os.symlink),  # another user's instance: a symlink
        ((OTHER, "lab"), os.link),  # another user's instance: a real socket, their account's
        ((USER, "second"), os.link),  # the same user's other instance: its own credential
    ],
)
def test_the_gateway_refuses_an_endpoint_that_is_not_the_instances_own(
    hub, setup, swapped_endpoint, victim, link
):
    client, owner, instance = setup["client"], *victim
    if instance == "second" and "second" not in hub.servers(USER):
        hub.start(USER, "second", setup["token"], {"image": BASE, "spec": SPEC})
    victim_pid = pid_of(hub, owner, instance)
    victim_home = environ_of(victim_pid)["HOME"]
    swapped_endpoint(endpoint_socket(victim_pid), link)
    since = last_event_id(hub)

    shell = client.ssh(f"{USER}+lab", f"echo $HOME; touch {victim_home}/pwned")
    assert shell.returncode == 1, shell.stdout
    assert "instance lab's SSH endpoint is not its own; refused" in shell.stderr
    assert shell.stdout == ""
    batch = setup["directory"] / "ls-batch"
    batch.write_text("ls\n")
    sftp = subprocess.run(
        ["sftp", *client.options(), "-P", str(hub.ssh_port), "-b", str(batch)]
        + [f"{USER}+lab@127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert sftp.returncode != 0
    assert not Path(victim_home, "pwned").exists()
    failures = [e for e in login_events(hub, since) if e["result"] == "failure"]
    assert len(failures) == 2, failures  # the shell, then SFTP
    assert all(e["resource"] == f"{USER}/lab" for e in failures)
    assert all("not the instance's own" in e["reason"] for e in failures)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"ssh": {"allowed_cidrs": ["10.0.0.0/33"]}}, "ssh.allowed_cidrs"),
        ({"ssh": {"keypairs": ["nope"]}}, "ssh.keypairs"),
        ({"ssh": {"enabled": True, "port": 22}}, "ssh.port"),
        ({"ssh": {"enabled": True}, "spec": "cpu.nope"}, "spec"),
    ],
)
def test_bad_ssh_settings_change_nothing(hub, setup, body, field):
    before = hub.atelier("GET", f"/instances/{USER}/lab", setup["token"]).json()
    response = hub.atelier("PATCH", f"/instances/{USER}/lab", setup["token"], json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == field
    assert (
        hub.atelier("GET", f"/instances/{USER}/lab", setup["token"]).json()["ssh"] == before["ssh"]
    )


def test_another_user_cannot_change_ssh_settings(hub, setup):
    body = {"ssh": {"enabled": True, "allowed_cidrs": ["0.0.0.0/0"]}}
    response = hub.atelier("PATCH", f"/instances/{USER}/lab", setup["other_token"], json=body)
    assert response.status_code == 404


def test_the_host_key_is_the_deployments_own(hub, setup):
    scan = subprocess.run(
        ["ssh-keyscan", "-t", "ed25519", "-p", str(hub.ssh_port), "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    offered = scan.stdout.split()[2]
    kept = (hub.dir / "data" / "ssh" / "host_ed25519_key.pub").read_text().split()[1]
    assert offered == kept


def test_the_documented_key_pair_path_takes_the_id(hub, setup):
    document = hub.atelier("GET", "/openapi.json").json()
    path = next(p for p in document["paths"] if p.startswith("/keypairs/"))
    assert path == "/keypairs/{id}"
    for method in ("get", "delete"):
        assert [p["name"] for p in document["paths"][path][method]["parameters"]] == ["id"]
    shown = hub.atelier("GET", path.format(id=setup["spare"]["id"]), setup["token"])
    assert shown.status_code == 200, shown.text
    assert shown.json()["name"] == "spare"


def test_a_key_pair_name_is_taken_once_per_user(hub, setup):
    token = setup["token"]
    before = hub.atelier("GET", "/keypairs", token).json()["keypairs"]
    again = hub.atelier("POST", "/keypairs", token, json={"name": "spare", "generate": True})
    assert again.status_code == 409, again.text
    error = again.json()["error"]
    assert (error["field"], error["message"]) == ("name", "a key pair named spare already exists")
    assert hub.atelier("GET", "/keypairs", token).json()["keypairs"] == before
    body = {"name": "spare", "generate": True}
    assert hub.atelier("POST", "/keypairs", setup["other_token"], json=body).status_code == 201


def test_deleting_a_key_refuses_it_at_once(hub, setup):
    token = setup["token"]
    client = setup["client"]
    assert client.ssh(f"{USER}+lab", "true").returncode == 0
    deleted = hub.atelier("DELETE", f"/keypairs/{setup['key']['id']}", token)
    assert deleted.status_code == 204
    assert refused(client.ssh(f"{USER}+lab", "true"))
    assert hub.atelier("GET", f"/instances/{USER}/lab", token).json()["ssh"]["keypairs"] == []
    again = hub.atelier(
        "POST", "/keypairs", token, json={"name": "l2", "public_key": client.public}
    )
    access = {"ssh": {"keypairs": [again.json()["id"]]}}
    assert hub.atelier("PATCH", f"/instances/{USER}/lab", token, json=access).status_code == 200
    assert client.ssh(f"{USER}+lab", "true").returncode == 0


def test_a_stopped_instance_says_so_and_closes(hub, setup):
    client = setup["client"]
    session = subprocess.Popen(
        [*client.argv(f"{USER}+lab"), "sleep 600"], stderr=subprocess.DEVNULL
    )
    time.sleep(2)
    stopped = hub.api("DELETE", f"/users/{USER}/servers/lab", setup["token"])
    assert stopped.status_code in (202, 204)
    hub.wait_for(lambda: not hub.servers(USER)["lab"]["ready"], what="lab stopped")
    assert session.wait(30) != 0  # the open session ends with the instance
    result = client.ssh(f"{USER}+lab", "true", timeout=30)
    assert result.returncode == 1
    assert "instance lab is stopped; start it from the hub" in result.stderr


def test_failed_logins_from_an_address_are_limited(envs_dir, tmp_path):
    """After max_failed_logins failures, even the right key is refused for the window."""
    limited = Hub(envs_dir, ssh={"ip": "127.0.0.1", "max_failed_logins": 3})
    try:
        token = limited.add_user(USER)
        client, stranger = Client(limited, tmp_path, "right"), Client(limited, tmp_path, "wrong")
        body = {"name": "right", "public_key": client.public}
        key = limited.atelier("POST", "/keypairs", token, json=body).json()
        limited.start(USER, "lab", token, {"image": BASE, "spec": SPEC})
        access = {"enabled": True, "keypairs": [key["id"]], "allowed_cidrs": ["127.0.0.1/32"]}
        patched = limited.atelier("PATCH", f"/instances/{USER}/lab", token, json={"ssh": access})
        assert patched.status_code == 200
        assert client.ssh(f"{USER}+lab", "true").returncode == 0
        for _ in range(3):
            assert refused(stranger.ssh(f"{USER}+lab", "true"))
        audited_logins(limited, 4)
        assert refused(client.ssh(f"{USER}+lab", "true"))
        events = audited_logins(limited, 5)
        assert "too many failed logins from this address" in events[-1]["reason"]
        assert [e["result"] for e in events] == ["success"] + ["failure"] * 4
    finally:
        limited.stop()
