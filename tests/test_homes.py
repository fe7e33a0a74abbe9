"""Instance homes on their own: emptied without root, made afresh as root, and never a way
for a user's links to lead root elsewhere."""

import os
import stat

import pytest

from atelier.spawner.local.accounts import prepare_shared_dir
from atelier.spawner.local.homes import InstanceHome

needs_root = pytest.mark.skipif(not InstanceHome.enforced(), reason="loop mounts need root")


def plant(home, outside):
    """What a run leaves behind: files, dotfiles and links to a host path."""
    (home / ".local" / "lib").mkdir(parents=True)
    (home / ".local" / "lib" / "installed.py").write_text("")
    (home / ".bashrc").write_text("alias ls=rm\n")
    (home / "escape").symlink_to(outside)
    (home / "secret").symlink_to(outside / "secret")


def test_without_root_the_home_is_emptied_at_start(tmp_path, monkeypatch):
    monkeypatch.setattr(InstanceHome, "enforced", staticmethod(lambda: False))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("kept\n")
    home = InstanceHome(tmp_path / "shared", "acct", "lab")
    home.reset(10, None)
    plant(home.path, outside)

    home.reset(10, None)
    assert list(home.path.iterdir()) == [] and stat.S_IMODE(home.path.stat().st_mode) == 0o700
    assert (outside / "secret").read_text() == "kept\n"


@needs_root
def test_a_home_from_before_is_replaced_without_following_its_links(tmp_path):
    """A home that was the user's own directory (before homes were filesystems) is removed,
    its links unfollowed; the new one is a bounded filesystem, gone again on release."""
    prepare_shared_dir(tmp_path / "shared")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("kept\n")
    home = InstanceHome(tmp_path / "shared", "acct", "lab")
    home.path.mkdir(parents=True)
    os.chown(home.path, 65534, 65534)
    plant(home.path, outside)

    home.reset(1, "nobody")
    try:
        assert os.path.ismount(home.path) and list(home.path.iterdir()) == []
        assert home.path.stat().st_uid == 65534 and stat.S_IMODE(home.path.stat().st_mode) == 0o700
        assert os.statvfs(home.path).f_blocks * os.statvfs(home.path).f_frsize < 1024**3
        assert (outside / "secret").read_text() == "kept\n"
    finally:
        home.release()
    assert not os.path.ismount(home.path) and not home.image.exists()
    assert home.path.stat().st_uid == 0 and list(home.path.iterdir()) == []
