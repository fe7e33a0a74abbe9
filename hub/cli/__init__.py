"""The `atelier` command."""
