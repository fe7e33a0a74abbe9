"""JupyterHub configuration for Atelier: everything comes from atelier.yaml.

`atelier run` loads this file; add plain JupyterHub settings below `configure(c)` to
override anything (for example another authenticator).
"""

from atelier.hub.app.config import configure

configure(c)  # noqa: F821 - `c` is provided by JupyterHub
