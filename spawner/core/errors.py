"""The one refusal every door passes on as structure: code, field and message."""

from __future__ import annotations


class OptionsError(ValueError):
    """A refused input: names the field, says what was wrong and what is allowed.

    Every door passes the structure on (`to_json`) instead of the text, so no client parses
    "field: message" back. `code` is the kind of refusal a program can act on: invalid,
    not_found, exists, conflict, quota_exceeded, unavailable, confirmation_required.
    """

    def __init__(self, field: str, message: str, code: str = "invalid"):
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.code = field, message, code

    def to_json(self) -> dict:
        """The refusal as the Atelier API answers it, in {"error": ...}."""
        return {"code": self.code, "message": self.message, "field": self.field}
