"""Atelier's spawners: one backend-neutral core (`atelier.spawner.core`) and thin backends."""
