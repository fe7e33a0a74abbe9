"""Atelier's single-user side: a jupyter-server extension loaded in every instance.

It keeps an instance from looking idle while one of its kernels is busy running a cell, so
the idle culler never stops running work (jupyterhub/jupyterhub#1498), it starts the
instance's SSH endpoint (atelier.extensions.ssh) when the spawner asks for one, and it serves
"save as image" of this instance at `<base_url>atelier/images` (atelier.extensions.images).
"""

import os
from datetime import datetime, timezone

from tornado.ioloop import PeriodicCallback


def _jupyter_server_extension_points():
    return [{"module": "atelier.extensions"}]


def busy_kernels(kernel_manager) -> list[str]:
    """Ids of the kernels that are running code now."""
    return [
        kernel_id
        for kernel_id in kernel_manager.list_kernel_ids()
        if getattr(kernel_manager.get_kernel(kernel_id), "execution_state", None) == "busy"
    ]


def _link_jupyter_server_extension(server_app):
    """JupyterLab's terminals run the shell as SSH sessions do (atelier.extensions.ssh), not as
    a login shell: Debian's /etc/profile would reset PATH and hide the image's python. Linked
    before jupyter_server_terminals (extensions link in name order), which reads this."""
    shell = [os.environ.get("SHELL", "/bin/bash")]
    server_app.terminado_settings.setdefault("shell_command", shell)


def _load_jupyter_server_extension(server_app):
    settings = server_app.web_app.settings

    def mark_busy_kernels_active():
        if busy_kernels(server_app.kernel_manager):
            # jupyter-server counts every setting ending in `_last_activity` as activity
            settings["atelier_busy_kernels_last_activity"] = datetime.now(timezone.utc)  # noqa: UP017 - images may run Python 3.9

    every = float(os.environ.get("ATELIER_BUSY_CHECK_SECONDS", "30"))
    PeriodicCallback(mark_busy_kernels_active, every * 1000).start()
    server_app.log.info("Atelier: busy kernels count as activity")

    from atelier.extensions import images

    images.load(server_app)

    # the endpoint's settings are no business of kernels and terminals
    fd, path = os.environ.pop("ATELIER_SSH_FD", None), os.environ.pop("ATELIER_SSH_SOCKET", None)
    if fd or path:
        from atelier.extensions import ssh

        gateway_key = os.environ.pop("ATELIER_SSH_GATEWAY_KEY")
        credential = os.environ.pop("ATELIER_SSH_CREDENTIAL")
        listener = ssh.bound_socket(fd, path)
        if ssh.start(listener, gateway_key, credential, dict(os.environ)):
            server_app.log.info("Atelier: SSH endpoint listening")
        else:
            server_app.log.warning("Atelier: no %s here (openssh-server); no SSH", ssh.SSHD)
