"""What the domain refuses, in its own words: the HTTP layer (errors.py) gives each kind its status.

Domain code (pools, users, the job engine, the operations) raises these and never an HTTP error,
so it reads the same from the CLI, a job worker or a request.
"""
from __future__ import annotations


class DomainError(Exception):
    """A refusal: ``reason`` says why, and ``field`` names the request field it is about, if any."""

    def __init__(self, reason: str, field: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.field = field

    @property
    def message(self) -> str:
        return f"{self.field}: {self.reason}" if self.field else self.reason


class NotFound(DomainError):
    """What was named does not exist."""


class Invalid(DomainError):
    """The request contradicts itself or names something it may not (whatever the state)."""


class Refused(DomainError):
    """The present state refuses it: a node's status, a pool being changed, the last admin."""


class Conflict(DomainError):
    """It clashes with another object: a name taken, a GPU in another pool."""


def not_found(what: str, ident, field: str | None = None) -> NotFound:
    # Clients confirm a delete by the next GET failing with "not found" in its message (compatibility.md).
    return NotFound(f"{what} {ident} not found", field)
