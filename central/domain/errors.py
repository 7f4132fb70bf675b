"""The one error type of the product; a single middleware maps it onto the HTTP envelope."""

from __future__ import annotations

from typing import Any


class MesError(Exception):
    """A refused business action: `code` is the exact code of domain.md, `status` its HTTP status."""

    status: int = 400

    def __init__(
        self, code: str, message: str | None = None, status: int | None = None, details: Any = None
    ) -> None:
        super().__init__(message or code)
        self.code = code
        self.message = message or code.replace("_", " ").capitalize()
        if status is not None:
            self.status = status
        self.details = details

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r}, status={self.status})"


class Rejected(MesError):
    status = 400


class Unauthorized(MesError):
    status = 401


class Forbidden(MesError):
    status = 403


class NotFound(MesError):
    status = 404


class Conflict(MesError):
    status = 409


class Unavailable(MesError):
    status = 503


class Upstream(MesError):
    status = 502
