"""Run a hub-managed service's module so that it ends with the hub.

`python -m atelier.hub.app.managed HUB_PID MODULE ARGS...` runs MODULE as `python -m` would,
after two things JupyterHub cannot do for its services:
- the kernel sends SIGTERM when the hub dies, even by `kill -9` (PR_SET_PDEATHSIG): JupyterHub
  starts services in their own session, and they would linger holding their ports;
- SIGINT, which JupyterHub sends first to stop a service, works even where the hub started
  with SIGINT ignored (a background job of a script, and every child of it); otherwise each
  service took JupyterHub's whole `interrupt_timeout` to stop.
Instances are not run this way: they outlive the hub on purpose.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import runpy
import signal
import sys

PR_SET_PDEATHSIG = 1


def end_with(hub_pid: int) -> None:
    """Die with the hub; exit now if it died before we asked."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != hub_pid:
        sys.exit(f"atelier: the hub (pid {hub_pid}) is gone; not starting {sys.argv[2]}")


def main() -> None:
    hub_pid, module, *args = sys.argv[1:]
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    end_with(int(hub_pid))
    sys.argv = [module, *args]
    with contextlib.suppress(KeyboardInterrupt):  # stopped by the hub: quietly
        runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
