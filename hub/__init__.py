"""Atelier's hub side: CLI, configuration, store, pages and hub-managed services."""
