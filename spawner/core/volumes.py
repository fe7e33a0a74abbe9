"""The work volume's rules every backend shares: sizes, the per-user quota, growth in
steps that never shrinks."""

from __future__ import annotations

from atelier.spawner.core.errors import OptionsError
from atelier.spawner.core.limits import Limits


class VolumeUnavailable(RuntimeError):
    """The volume cannot be attached now; the message says why and what to do (the user
    reads it: no host path)."""


def check_volume_size(size_gb: object, limits: Limits) -> int:
    if isinstance(size_gb, bool) or not isinstance(size_gb, int):
        raise OptionsError("volume_gb", "must be a whole number of GB")
    if not limits.volume_min_gb <= size_gb <= limits.volume_max_gb:
        raise OptionsError(
            "volume_gb",
            f"must be from {limits.volume_min_gb} to {limits.volume_max_gb} GB, got {size_gb}",
        )
    return size_gb


def check_volume_quota(total_gb: int, limits: Limits, field: str) -> None:
    if total_gb > limits.volume_quota_gb:
        raise OptionsError(
            field,
            f"your volumes would hold {total_gb} GB; the quota is {limits.volume_quota_gb} GB",
        )


def check_expand(current_gb: int, add_gb: object, owner_total_gb: int, limits: Limits) -> int:
    """The new size after adding `add_gb`: volumes grow in steps and never shrink."""
    if isinstance(add_gb, bool) or not isinstance(add_gb, int):
        raise OptionsError("add_gb", "must be a whole number of GB")
    if add_gb < 1:
        raise OptionsError("add_gb", f"volumes never shrink; add at least 1 GB, got {add_gb}")
    if add_gb > limits.volume_step_max_gb:
        raise OptionsError(
            "add_gb", f"at most {limits.volume_step_max_gb} GB per expansion, got {add_gb}"
        )
    if current_gb + add_gb > limits.volume_max_gb:
        raise OptionsError(
            "add_gb",
            f"a volume holds at most {limits.volume_max_gb} GB; it has {current_gb}, "
            f"so at most {limits.volume_max_gb - current_gb} more",
        )
    check_volume_quota(owner_total_gb + add_gb, limits, "add_gb")
    return current_gb + add_gb
