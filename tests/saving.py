"""What the save-as-image tests of every backend share: a user installs things in a running
instance (two tiny wheels, with pip and pip --user, an IDE-plugin-like file, a shell setting,
a file in work/ and a link to a root-only file), saves it through the API, and follows the
save's operation to its end."""

import base64

from wheels import tiny_wheel

INSTALL = """
import base64, pathlib, subprocess, sys
home = pathlib.Path.home()
for name, data, user in WHEELS:
    wheel = home / name
    wheel.write_bytes(base64.b64decode(data))
    command = [sys.executable, "-m", "pip", "install", "--no-index", "--quiet", str(wheel)]
    subprocess.run(command + (["--user"] if user else []), check=True)
    wheel.unlink()
plugin = home / ".vscode-server" / "extensions" / "atelier.test" / "package.json"
plugin.parent.mkdir(parents=True)
plugin.write_text('{"name": "test"}')
with open(home / ".bashrc", "a") as rc:
    rc.write("export SAVED_SETTING=kept\\n")
(home / "work" / "data.txt").write_text("the volume's")
(home / "shadow").symlink_to("/etc/shadow")  # saved as a link: never read as root
print("installed")
"""


def save(hub, token, instance, name, owner="alice"):
    return hub.atelier("POST", f"/instances/{owner}/{instance}/images", token, json={"name": name})


def follow(hub, token, operation: dict, timeout: float = 180) -> dict:
    """The operation once it has ended."""

    def ended():
        now = hub.atelier("GET", f"/operations/{operation['id']}", token).json()
        return now if now["status"] != "running" else None

    return hub.wait_for(ended, timeout, "the save to end")


def install_and_save(hub, token, options: dict, wheels_dir) -> dict:
    """alice's instance `src` started on `options`, with INSTALL's things installed, saved as
    `alice/my-env`: the save's operation as it ended."""
    from kernels import run_in

    hub.start("alice", "src", token, options)
    given = [
        (path.name, base64.b64encode(path.read_bytes()).decode(), user)
        for path, user in (
            (tiny_wheel(wheels_dir, "tinyplain", "from pip install"), False),
            (tiny_wheel(wheels_dir, "tinyuser", "from pip install --user"), True),
        )
    ]
    assert run_in(hub, "alice", "src", token, f"WHEELS = {given!r}\n{INSTALL}") == "installed\n"
    response = save(hub, token, "src", "my-env")
    assert response.status_code == 202, response.text
    started = response.json()
    assert (started["status"], started["target"]) == ("running", "alice/my-env")
    return follow(hub, token, started)
