"""The Docker backend: instances are containers (DockerSpawner) on a Docker engine."""
