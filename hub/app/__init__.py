"""The hub process: JupyterHub with Atelier's handlers (hub.py, handlers.py), configured
from atelier.yaml (config.py), with Atelier's sign-in (auth.py)."""
