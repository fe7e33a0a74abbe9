"""What the backends whose instances run on this machine share (local processes, Docker
containers): the shared dir, the XFS work volumes in it, and the spawner traits the hub's
configuration gives them."""

from __future__ import annotations

from pathlib import Path

from atelier.spawner import core
from atelier.spawner.backend import Backend
from atelier.spawner.credentials import deployment_keys
from atelier.spawner.local import accounts
from atelier.spawner.local.volumes import LocalVolume


class MachineBackend(Backend):
    spawner_class: str  # its spawner's class name, as JupyterHub's config knows it

    @property
    def shared_dir(self) -> Path:
        return self.settings.resolved_shared_dir

    def configure_hub(self, c, data_dir: Path) -> None:
        spawner = c[self.spawner_class]
        c.JupyterHub.spawner_class = self.spawner_entry_point
        spawner.data_dir = str(data_dir)
        spawner.shared_dir = str(self.shared_dir)
        if self.settings.ssh.enabled:
            _, client_key = deployment_keys(data_dir)
            spawner.ssh_gateway_key = client_key.with_suffix(".pub").read_text()

    @property
    def spawner_entry_point(self) -> str:
        return f"atelier-{self.name}"

    def prepare(self) -> None:
        try:
            accounts.prepare_shared_dir(self.shared_dir)
        except PermissionError as error:
            raise ValueError(f"shared_dir: {error}") from None

    def volume(self, owner: str, instance: str) -> LocalVolume:
        """An instance's work volume, under its owner's account."""
        return LocalVolume(self.shared_dir, self.store.claim_account(owner), instance)

    def volume_used_bytes(self, owner: str, instance: str) -> int | None:
        return self.volume(owner, instance).used_bytes()

    def expand_volume(self, owner: str, instance: str, size_gb: int) -> None:
        try:
            self.volume(owner, instance).expand(size_gb)
        except core.VolumeUnavailable as error:  # lost
            raise core.OptionsError("add_gb", str(error)) from None
