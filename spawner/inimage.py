"""What Atelier puts into every image it builds, on every backend: its jupyter-server
extension, the SDK, the training module (what a job's ranks import), the notebook widgets and
the model server (what a deployment's replicas run)."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path


def package_dir(name: str) -> Path:
    """Found, not imported: the widgets need ipywidgets and the server KServe, which only
    images have."""
    return Path(next(iter(find_spec(name).submodule_search_locations)))


EXTENSION_DIR = package_dir("atelier.extensions")
# (source, its name under atelier/ in the image); sdk/ holds training/ and serving/, and
# extensions/ holds widgets/: each is copied as its own
PACKAGES = (
    (EXTENSION_DIR, "extensions"),
    (package_dir("atelier.sdk"), "sdk"),
    (package_dir("atelier.training"), "training"),
    (package_dir("atelier.serving"), "serving"),
    (package_dir("atelier.widgets"), "widgets"),
)
LEFT_OUT = ("__pycache__", "training", "serving", "widgets")
