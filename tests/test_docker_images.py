"""The Docker backend's images: what a build sees (without an engine), and one real build."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import docker
import pytest

from atelier.spawner.docker import images

PYTHON = "python_3.11-cpu-py_3.11-debian_12-x86_64"
TORCH = "pytorch_2.13.0-cpu-py_3.11-debian_12-x86_64"
CUDA = "pytorch_2.4.0-cuda_12.4-py_3.11-ubuntu_22.04-x86_64"
CANN = "pytorch_2.1.0-cann_8.0.rc1-py_3.9-euleros_2.10-aarch64"
CATALOG = (PYTHON, TORCH, CUDA, CANN)


def test_from_lines_name_the_bases_but_not_earlier_stages():
    text = (
        "# FROM commented\nFROM --platform=linux/amd64 debian:12 AS build\nRUN true\n"
        "from build\nFROM \\\n  atelier/python:1 as final\n"
    )
    assert images.from_images(text) == ["debian:12", "atelier/python:1"]


def test_the_torch_image_is_built_on_the_python_image_and_the_others_on_foreign_bases():
    assert images.base_of(TORCH) == PYTHON
    assert images.from_images(images.dockerfile(PYTHON).read_text()) == [images.BASE]
    assert [images.base_of(name) for name in (PYTHON, CUDA, CANN)] == [None, None, None]
    assert images.image_tag(PYTHON) == f"atelier/{PYTHON}"
    assert images.has_definition(PYTHON) and not images.has_definition("no-such-image")


@pytest.mark.parametrize("name", CATALOG)
def test_every_dockerfile_has_the_extension_sdk_sshd_and_jovyan(name):
    text = images.dockerfile(name).read_text()
    assert text.startswith("# ")  # why it is as it is
    site = "/opt/env/lib/python3.9" if "py_3.9" in name else "/opt/env/lib/python3.11"
    assert f"COPY atelier {site}/site-packages/atelier\n" in text
    assert (
        "COPY atelier/extensions/atelier.json "
        "/opt/env/etc/jupyter/jupyter_server_config.d/atelier.json\n"
    ) in text
    assert "pip install --no-cache-dir --find-links /tmp/wheels -r /tmp/requirements.txt" in text
    # PyPI and the wheels Atelier brings; a CUDA build also PyTorch's index of its CUDA
    cuda = re.search(r"-cuda_(\d+)\.(\d+)-", name)
    index = f"https://download.pytorch.org/whl/cu{''.join(cuda.groups())}" if cuda else None
    assert re.findall(r"--extra-index-url (\S+)", text) == ([index] if cuda else [])
    assert re.search(r"^USER 1000$", text, re.M)
    assert text.rstrip().endswith('WORKDIR /home/jovyan\nCMD ["jupyterhub-singleuser"]')
    if images.base_of(name) is None:  # made here, not inherited
        assert "--uid 1000 --gid 1000 --create-home --home-dir /home/jovyan" in text
        assert "--shell /bin/bash jovyan" in text
        assert "ENV PIP_CERT=/usr/local/share/atelier/ca-certificates.crt" in text
        assert "PATH=/opt/env/bin:$PATH" in text
        assert "-m venv /opt/env" in text
        if images.BASE not in text:  # the debian base has OpenSSH already
            assert "openssh-server" in text
    listed = images.requirement_files(images.IMAGES_DIR / name / "requirements.txt")
    pinned = images.pins(line for file in listed for line in file.read_text().splitlines())
    assert {"jupyterhub", "jupyterlab", "ipywidgets"} <= set(pinned)


DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
"""


@pytest.mark.parametrize(
    "texts, mirror",
    [
        ([DEB822], "http://deb.debian.org/debian"),
        ([DEB822.replace("deb.debian.org/debian", "apt.local/")], "http://apt.local"),
        (
            ["Types: deb\nURIs: http://off/debian\nSuites: bookworm\nEnabled: no\n", DEB822],
            "http://deb.debian.org/debian",
        ),
        (["deb [signed-by=/k.gpg] https://local/debian/ bookworm main\n"], "https://local/debian"),
        (
            ["deb-src http://src/debian bookworm main\ndeb http://ok/debian bookworm main\n"],
            "http://ok/debian",
        ),
        (["# deb http://x/debian bookworm main\ndeb cdrom:[x]/ bookworm main\n"], None),
        (["Types: deb\nURIs: http://security/\nSuites: bookworm-security\n"], None),
        (["deb http://nodesource/node nodistro main\n"], None),
    ],
)
def test_the_mirror_is_the_first_http_source_of_bookworm(texts, mirror):
    assert images.mirror_from_sources(texts) == mirror


def test_the_host_mirror_falls_back_to_debian_and_reads_sources_d(tmp_path):
    assert images.host_mirror(tmp_path) == images.DEFAULT_MIRROR
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        DEB822.replace("deb.debian.org", "apt.local")
    )
    (tmp_path / "sources.list.d" / "other.list.disabled").write_text("deb http://no bookworm x\n")
    assert images.host_mirror(tmp_path) == "http://apt.local/debian"


def test_pins_are_name_equals_version_lines_only():
    lines = [
        "# a comment",
        "-r ../other/requirements.txt",
        "--find-links /x",
        "Torch==2.13.0  # the CPU wheel",
        "scikit_learn==1.9.1",
        "numpy>=2",
        "pandas==3.*",
        "requests[socks]==2.34.2 ; python_version >= '3.9'",
        "",
    ]
    assert {name: str(req.specifier) for name, req in images.pins(lines).items()} == {
        "torch": "==2.13.0",
        "scikit-learn": "==1.9.1",
        "pandas": "==3.*",
        "requests": "==2.34.2",
    }


def test_wheels_match_a_pin_by_name_and_version_as_pip_would(tmp_path):
    names = [
        "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl",
        "torch-2.4.0-cp311-cp311-manylinux1_x86_64.whl",
        "scikit_learn-1.9.1-cp311-cp311-manylinux_2_17_x86_64.whl",
        "numpy-2.4.6-cp311-cp311-manylinux_2_17_x86_64.whl",
        "not-a-wheel.whl",
        "torch-2.13.0.tar.gz",
    ]
    for name in names:
        (tmp_path / name).touch()
    pinned = images.pins(["torch==2.13.0", "scikit-learn==1.9.1", "pandas==3.1.1"])
    found = images.matching_wheels(pinned, [tmp_path, tmp_path / "absent"])
    assert sorted(p.name for p in found) == [names[2], names[0]]


def test_find_links_come_from_the_environment_and_pip_conf(tmp_path):
    first, second, third = (tmp_path / n for n in ("first", "second", "third"))
    for directory in (first, second, third):
        directory.mkdir()
    conf = tmp_path / "pip.conf"
    conf.write_text(
        f"[global]\nfind-links =\n    file://{second}\n    https://wheels.example/\n"
        f"    {tmp_path / 'absent'}\n[install]\nfind_links = {third} {first}\n"
    )
    broken = tmp_path / "broken.conf"
    broken.write_text("no section\n")
    environ = {"PIP_FIND_LINKS": f"{first} relative/dir"}
    assert images.find_links_dirs(environ, [conf, broken, tmp_path / "none"]) == [
        first,
        second,
        third,
    ]
    assert images.find_links_dirs({**environ, "PIP_CONFIG_FILE": os.devnull}, [conf]) == [first]
    assert images.find_links_dirs({"PIP_CONFIG_FILE": str(conf)}, []) == [second, third, first]


def test_the_torch_context_holds_its_lists_atelier_the_ca_bundle_and_its_wheel(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    torch = wheels / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    torch.write_bytes(b"wheel")
    (wheels / "torch-2.4.0-cp311-cp311-manylinux1_x86_64.whl").touch()
    (wheels / "jupyterlab-4.6.6-py3-none-any.whl").touch()  # pinned by the included list
    ca = tmp_path / "ca.crt"
    ca.write_text("CERTS")
    context = tmp_path / "context"
    context.mkdir()
    images.make_context(TORCH, context, [wheels], ca_bundle=ca)
    files = {str(p.relative_to(context)) for p in context.rglob("*") if p.is_file()}
    included = f"requirements.d/{PYTHON}/requirements.txt"
    assert files == {
        "Dockerfile",
        "requirements.txt",
        included,
        "atelier/extensions/__init__.py",
        "atelier/extensions/ssh.py",
        "atelier/extensions/images.py",
        "atelier/extensions/atelier.json",
        "atelier/sdk/__init__.py",
        "atelier/sdk/jobs.py",
        "atelier/sdk/deployments.py",
        "atelier/training/__init__.py",
        "atelier/serving/__init__.py",
        "atelier/serving/__main__.py",
        "atelier/serving/batch.py",
        "atelier/widgets/__init__.py",
        "atelier/widgets/render.py",
        "atelier/widgets/deployments.py",
        "ca-certificates.crt",
        f"wheels/{torch.name}",
        "wheels/jupyterlab-4.6.6-py3-none-any.whl",
    }
    assert (context / "requirements.txt").read_text().splitlines()[0] == f"-r {included}"
    source = (images.IMAGES_DIR / TORCH / "requirements.txt").read_text().splitlines()
    assert (context / "requirements.txt").read_text().splitlines()[1:] == source[1:]
    assert (context / included).read_text() == (
        images.IMAGES_DIR / PYTHON / "requirements.txt"
    ).read_text()
    assert (context / "ca-certificates.crt").read_text() == "CERTS"
    assert (context / "wheels" / torch.name).read_bytes() == b"wheel"
    assert (context / "Dockerfile").read_text() == images.dockerfile(TORCH).read_text()


def test_the_python_context_has_empty_wheels_and_includes_all_readable(tmp_path):
    previous = os.umask(0o077)  # the hub's
    try:
        images.make_context(PYTHON, tmp_path, [], ca_bundle=Path(__file__))
    finally:
        os.umask(previous)
    for path in tmp_path.rglob("*"):  # the image's user reads what COPY brings
        assert path.stat().st_mode & 0o777 == (0o755 if path.is_dir() else 0o644), path
    assert not any((tmp_path / "wheels").iterdir())
    assert not any((tmp_path / "requirements.d").iterdir())
    assert "-r" not in (tmp_path / "requirements.txt").read_text()


class NoImages:
    """A client whose engine holds no image (and may never be asked to build)."""

    class images:  # noqa: N801 - as docker.DockerClient spells it
        @staticmethod
        def get(reference):
            raise docker.errors.ImageNotFound(reference)

    api = None


@pytest.mark.parametrize("name", [CUDA, CANN])
def test_a_foreign_base_the_engine_lacks_is_named_and_nothing_is_pulled(name, tmp_path):
    base = images.from_images(images.dockerfile(name).read_text())[0]
    with pytest.raises(RuntimeError, match=f"only where its base exists.*lacks {re.escape(base)}"):
        images.build(NoImages(), name, tmp_path, print)
    assert images.digest(NoImages(), name) is None


def test_a_rootfs_tarball_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    fake = tmp_path / "debootstrap"
    fake.write_text(
        "#!/bin/sh\n"
        'target="$4"; mkdir -p "$target/etc/ssh" "$target/var/cache/apt/archives"\n'
        'touch "$target/etc/ssh/ssh_host_ed25519_key" "$target/etc/ssh/sshd_config"\n'
        'touch "$target/var/cache/apt/archives/python3.deb"\n'
        '[ "$1 $3 $5" = "--variant=minbase bookworm http://mirror.test/debian" ]\n'
        f'[ "$2" = --include={images.BASE_PACKAGES} ]\n'
    )
    fake.chmod(0o755)
    monkeypatch.setattr(images, "DEBOOTSTRAP", str(fake))
    cache = tmp_path / "cache"
    tarball = images.rootfs_tarball(cache)
    assert tarball.name == "debian-12-rootfs.tar"
    monkeypatch.setattr(images, "TAR", "/bin/false")
    with pytest.raises(RuntimeError, match="tar failed"):
        images.make_rootfs(tarball, print, "http://mirror.test/debian")
    assert list(cache.iterdir()) == []  # nothing half made is left, nothing looks made
    monkeypatch.setattr(images, "TAR", "/usr/bin/tar")
    images.make_rootfs(tarball, print, "http://mirror.test/debian")
    assert list(cache.iterdir()) == [tarball]
    import tarfile

    with tarfile.open(tarball) as archive:
        names = set(archive.getnames())
    assert "./etc/ssh/sshd_config" in names
    assert "./etc/ssh/ssh_host_ed25519_key" not in names  # every instance makes its own
    assert "./var/cache/apt/archives/python3.deb" not in names


@pytest.mark.e2e
def test_the_python_image_builds_and_runs_jupyterhub_singleuser_as_jovyan(docker_engine):
    lines = []
    with contextlib.closing(docker_engine.client()) as client:
        image_id = images.build(client, PYTHON, docker_engine.cache_dir, lines.append)
        assert image_id.startswith("sha256:") and image_id == images.digest(client, PYTHON)
        assert images.built(client)[PYTHON] == image_id and "debian:12" not in images.built(client)
        assert any("Successfully tagged" in line for line in lines)
        config = client.images.get(image_id).attrs["Config"]
        assert config["User"] == "1000" and config["Cmd"] == ["jupyterhub-singleuser"]
        assert config["WorkingDir"] == "/home/jovyan"

        def run(command: str) -> str:
            output = client.containers.run(
                image_id, ["bash", "-c", command], user="1000", network_mode="host", remove=True
            )
            return output.decode().strip()

        assert re.fullmatch(r"\d+\.\d+\.\d+", run("jupyterhub-singleuser --version"))
        run("python -c 'import atelier.extensions, atelier.sdk, ipywidgets'")
        extensions = re.sub(r"\x1b\[[0-9;]*m", "", run("jupyter server extension list 2>&1"))
        assert re.search(r"atelier\.extensions\s+enabled", extensions), extensions
        run("test -x /usr/sbin/sshd && test -x /usr/lib/openssh/sftp-server")
        run("command -v ssh-keygen")
        assert run("id -u; id -g; id -un; echo $HOME; pwd; getent passwd 1000 | cut -d: -f7") == (
            "1000\n1000\njovyan\n/home/jovyan\n/home/jovyan\n/bin/bash"
        )
        assert run("ls /etc/ssh/ | grep -c ssh_host_ || true") == "0"
