"""Save as image on the local backend: a snapshot is its base's environment plus one layer,
a tar of the instance's home as its user left it (work/ aside: the volume stays the
instance's), named by its SHA-256.

Everything a user installs outside work/ lives in the home: `pip install` and
`pip install --user` (~/.local, as the image's environment is root's), conda environments
made there, IDE server plugins (~/.vscode-server, ~/.pycharm_helpers, ~/.cache/JetBrains) and
shell configuration. The base environment is shared, never copied. du and tar act as the
instance's account on both ends (its file rights; the helper account's real ids, so it cannot
trace them; none of the hub's environment; killed if it stops them), so root never walks or
writes a path the user controls; root only hashes and stores the stream, in the hub's private
data dir, and a start checks the digest before anything of the layer reaches the new home.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import secrets
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from atelier.spawner import core
from atelier.spawner.local import accounts

TAR, DU = "/usr/bin/tar", "/usr/bin/du"
TOOL_ENVIRONMENT = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
CHUNK = 1 << 20
WATCH_SECONDS = 0.5  # how often a tool is checked for being stopped
# what is no part of the image: the volume, caches, and the running server's secrets
EXCLUDED = ("./work", "./.cache/pip", "./.local/share/jupyter/runtime")
PARTIAL = "partial-"


def snapshots_dir(data_dir: Path) -> Path:
    """Layers lie in the hub's private data dir: no instance reads or changes them."""
    return Path(data_dir).absolute() / "snapshots"


def layer_path(snapshots_dir: Path, digest: str) -> Path:
    return snapshots_dir / f"{digest.replace(':', '-')}.tar"


def tree_bytes(root: Path, account: str | None) -> int:
    """Bytes in the files under `root` on its own filesystem, less what the image leaves
    out, counted by du as `account` (it never follows a link)."""
    command = [DU, "--summarize", "--bytes", "--one-file-system"]
    command += [f"--exclude={path}" for path in EXCLUDED] + ["."]
    try:
        with _child(command, root, account, stdout=subprocess.PIPE) as du:
            output = du.stdout.read().decode()
    except RuntimeError as error:  # what the account itself cannot read (its own chmod 000)
        raise core.OptionsError("instance", f"its home could not be measured: {error}") from None
    return int(output.split()[0])


def as_account(account: str | None) -> Callable[[], None] | None:
    """What a child runs before exec to act as `account` (None: stay the hub's): its files
    and rights are the account's (effective ids), but its real and saved ids are the helper
    account's, which no instance runs as, so the account's processes can neither trace,
    read nor signal it (ptrace and kill need the real or saved ids to match)."""
    if account is None:
        return None
    user, helper = pwd.getpwnam(account), pwd.getpwnam(accounts.HELPER)
    groups = os.getgrouplist(account, user.pw_gid)

    def preexec() -> None:
        os.setgroups(groups)
        os.setresgid(helper.pw_gid, user.pw_gid, helper.pw_gid)
        os.setresuid(helper.pw_uid, user.pw_uid, helper.pw_uid)

    return preexec


def save(
    home: Path,
    account: str | None,
    snapshots_dir: Path,
    progress: Callable[[str, int, int], None],
) -> str:
    """Archive `home` as `account` into a layer; return its digest. Nothing is kept when it
    fails: the layer gets its name only once it is whole."""
    total = tree_bytes(home, account)
    snapshots_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = snapshots_dir / f"{PARTIAL}{secrets.token_hex(8)}.tar"
    digest, done = hashlib.sha256(), 0
    # exit status 1: a file changed as it was read (the instance runs on): saved as it was
    command = [TAR, "--create", "--file=-", "--one-file-system", "--numeric-owner"]
    command += [f"--exclude={path}" for path in EXCLUDED] + ["."]
    try:
        with (
            open(partial, "xb") as out,
            _child(command, home, account, ok=(0, 1), stdout=subprocess.PIPE) as tar,
        ):
            for chunk in iter(lambda: tar.stdout.read(CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
                done += len(chunk)
                progress("saving", done, total)
        progress("verifying", done, total)
        name = f"sha256:{digest.hexdigest()}"
        if hash_file(partial) != name:
            raise RuntimeError("the layer changed on disk as it was written")
        partial.rename(layer_path(snapshots_dir, name))
        return name
    finally:
        partial.unlink(missing_ok=True)


def restore(image: core.Image, snapshots_dir: Path, home: Path, account: str | None) -> None:
    """Unpack a snapshot's layer into a fresh home as `account`, once its content is what
    was saved; a missing or changed layer is refused before the home is touched."""
    layer = layer_path(snapshots_dir, image.digest or "none")
    if not layer.is_file():
        raise core.OptionsError(
            "image",
            f"the content of {image.name} is missing on this machine; choose another image",
            "unavailable",
        )
    if hash_file(layer) != image.digest:
        raise core.OptionsError(
            "image",
            f"the content of {image.name} does not match its recorded digest {image.digest} "
            "(changed after it was saved); it is not started, choose another image",
            "unavailable",
        )
    command = [TAR, "--extract", "--file=-", "--no-same-owner", "--delay-directory-restore"]
    with open(layer, "rb") as source, _child(command, home, account, stdin=source):
        pass


def hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(CHUNK), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


@contextlib.contextmanager
def _child(command: list[str], cwd: Path, account: str | None, ok=(0,), **streams) -> Iterator:
    """A tool in `cwd` as `account`; RuntimeError with what it said when it exits with
    another status than `ok` (its errors go to a file: a full pipe would stall it)."""
    streams = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, **streams}
    with (
        tempfile.TemporaryFile() as errors,
        subprocess.Popen(
            command,
            cwd=cwd,
            env=TOOL_ENVIRONMENT,  # none of the hub's (its service's token): the user reads it
            preexec_fn=as_account(account),
            stderr=errors,
            **streams,
        ) as child,
    ):
        watch = threading.Thread(target=_kill_when_stopped, args=(child,), daemon=True)
        watch.start()
        try:
            yield child
        except BaseException:
            child.kill()
            raise
        finally:
            if child.stdout:
                child.stdout.close()
        if child.wait() == -signal.SIGKILL and getattr(child, "was_stopped", False):
            raise RuntimeError(f"{command[0]} was stopped from inside the instance")
        if child.returncode not in ok:
            errors.seek(0)
            said = errors.read().decode(errors="replace").strip()[-500:]
            raise RuntimeError(f"{command[0]} failed (exit status {child.returncode}): {said}")


def _kill_when_stopped(child: subprocess.Popen) -> None:
    """The account may signal the tools that act as it (exec makes their saved id its own):
    one it stops (SIGSTOP) would hold the save, the start or a hub thread for ever, so it is
    killed instead."""
    stat = Path(f"/proc/{child.pid}/stat")
    while child.poll() is None:
        with contextlib.suppress(OSError, IndexError):
            if stat.read_text().rsplit(")", 1)[1].split()[0] in ("T", "t"):
                child.was_stopped = True
                child.kill()
                return
        time.sleep(WATCH_SECONDS)


def sweep(snapshots_dir: Path, known: set[str]) -> None:
    """Remove partial layers and layers no catalog image names (a cut-off save's)."""
    if not snapshots_dir.is_dir():
        return
    keep = {layer_path(snapshots_dir, digest).name for digest in known}
    for path in snapshots_dir.iterdir():
        if path.name not in keep:
            path.unlink(missing_ok=True)
