"""The Atelier service process: the REST API v1, its OpenAPI document and the SSH page."""
