"""One error base class with a stable code and HTTP status.

Everything the sidecar refuses is a `SidecarError`. Over HTTP it becomes an RFC 9457
`application/problem+json` body (see `sidecar.http.middleware`); on the command line a
message without a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


class SidecarError(Exception):
    """Base of every refusal: `code` is stable and documented, `status` is its HTTP status."""

    code: ClassVar[str] = "internal"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    def to_problem(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"https://sidecar.dev/problems/{self.code}",
            "title": self.title,
            "status": self.status,
            "code": self.code,
            "detail": self.detail,
        }
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body

    def headers(self) -> dict[str, str]:
        return {}


class Unauthorized(SidecarError):
    code, status, title = "unauthorized", 401, "Unauthorized"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="sidecar"'}


class Forbidden(SidecarError):
    code, status, title = "forbidden", 403, "Forbidden"


class NotFound(SidecarError):
    code, status, title = "not_found", 404, "Not found"


class Conflict(SidecarError):
    code, status, title = "conflict", 409, "Conflict"


class CursorExpired(SidecarError):
    code, status, title = "cursor_expired", 410, "Cursor expired"


class PayloadTooLarge(SidecarError):
    code, status, title = "payload_too_large", 413, "Payload too large"


class ValidationFailed(SidecarError):
    code, status, title = "validation_failed", 422, "Validation failed"


class InvalidRequest(SidecarError):
    code, status, title = "invalid_request", 400, "Invalid request"


class ExpressionTooLarge(InvalidRequest):
    """A client-supplied expression (Electric's `where`) over the size limits."""

    code, title = "expression_too_large", "Expression too large"


class MethodNotAllowed(InvalidRequest):
    status = 405


class RequestTimeout(SidecarError):
    code, status, title = "request_timeout", 408, "Request timeout"


class _RetryAfter(SidecarError):
    def __init__(self, detail: str, retry_after: int = 1, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.retry_after = max(1, int(retry_after))

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class RateLimited(_RetryAfter):
    code, status, title = "rate_limited", 429, "Too many requests"

    def __init__(
        self,
        detail: str,
        retry_after: int = 1,
        rate_headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail, retry_after, **extra)
        self.rate_headers = dict(rate_headers or {})  # RateLimit-* (sidecar.ratelimit)

    def headers(self) -> dict[str, str]:
        return {**self.rate_headers, **super().headers()}


class CertificateMismatch(Forbidden):
    """The token names another device than the client certificate (server.tls.bind_claim)."""

    code, title = "certificate_mismatch", "Certificate mismatch"


class Unavailable(_RetryAfter):
    code, status, title = "unavailable", 503, "Service unavailable"


class SlotInUse(_RetryAfter):
    """Another sidecar captures from the configured replication slot (it holds the slot's
    lock, or streams from it): this one waits, and never drops the slot (`/readyz`)."""

    code, status, title = "slot_in_use", 503, "Replication slot in use"


@dataclass(frozen=True)
class ConfigProblem:
    """One located problem in a config file."""

    file: str
    path: str  # key path, e.g. "collections.todos.read"; "" for the document
    line: int | None  # 1-based line in `file`, when known
    message: str

    def __str__(self) -> str:
        where = self.file + (f":{self.line}" if self.line else "")
        key = f" {self.path}:" if self.path else ""
        return f"{where}:{key} {self.message}"


class ConfigError(SidecarError):
    """A config that cannot run; carries every problem found, not just the first."""

    code, status, title = "config_invalid", 500, "Invalid configuration"

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        n = len(self.problems)
        super().__init__(f"{n} problem{'s' if n != 1 else ''} in the configuration:\n{lines}")


class PreflightError(SidecarError):
    """The database is not ready for the sidecar; carries every problem with its fix."""

    code, status, title = "preflight_failed", 500, "Database not ready"

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"the database is not ready for the sidecar:\n{lines}")


class StoreKeyInvalid(SidecarError):
    """The store cannot be read with the key the config gives (or without one)."""

    code, status, title = "store_key_invalid", 500, "Store key invalid"


class StoreInUse(SidecarError):
    """`sidecar rekey` needs the store to itself; a sidecar has it open (or the reverse)."""

    code, status, title = "store_in_use", 500, "Store in use"


class EncryptionUnavailable(SidecarError):
    """`store.encryption_key` is set but the SQLCipher binding is not installed."""

    code, status, title = "store_encryption_unavailable", 500, "Store encryption unavailable"
