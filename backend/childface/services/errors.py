"""Domain errors with stable codes.

Services raise these; the API turns each into HTTP `status` with the body
`{"error": {"code": ..., "message": ...}}`, and the CLI prints the message.
Codes are part of the API contract: clients branch on them, so they never
change meaning.
"""

from __future__ import annotations


class DomainError(Exception):
    """A request that cannot be honoured, for a reason the caller can act on."""

    code = "invalid_input"
    status = 400

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidInput(DomainError):
    code = "invalid_input"
    status = 400


class InvalidImage(DomainError):
    """Bytes that are not a decodable photo (or exceed the pixel limit)."""

    code = "invalid_image"
    status = 400


class Unauthorized(DomainError):
    code = "unauthorized"
    status = 401


class Forbidden(DomainError):
    code = "forbidden"
    status = 403


class NotFound(DomainError):
    code = "not_found"
    status = 404


class Conflict(DomainError):
    code = "conflict"
    status = 409


class DuplicateImage(Conflict):
    code = "duplicate_image"


class PayloadTooLarge(DomainError):
    code = "payload_too_large"
    status = 413

