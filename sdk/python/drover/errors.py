"""The exceptions the SDK raises; every one is a :class:`DroverError`."""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional

if TYPE_CHECKING:
    from .models import Job

__all__ = [
    "DroverError",
    "ConnectionError",
    "ApiError",
    "AuthError",
    "NotFoundError",
    "ConflictError",
    "TimeoutError",
    "RemoteError",
]


class DroverError(Exception):
    """Base class of every error this SDK raises."""


class ConnectionError(DroverError, builtins.ConnectionError):
    """No server could be reached (refused, unreachable, name not found, dropped).

    Also a builtin :class:`ConnectionError`, so ``except ConnectionError`` catches it.
    """


class ApiError(DroverError):
    """The server answered with an error status (4xx/5xx) and its JSON error body.

    Attributes:
        status: The HTTP status, e.g. 400.
        code: The server's stable code, e.g. ``invalid_spec``, ``bad_request``,
            ``not_found``, ``conflict``, ``unauthorized``, ``forbidden``, ``too_large``,
            ``internal``.
        message: What went wrong, for people.
        fields: For ``invalid_spec``: each problem field's dotted path
            (``exec.command``, ``timeout_ms``) and what is wrong with it.
        details: The same problems as the server listed them, in order.
        request_id: For internal errors: the id to look up in the server's log.
        body: The decoded error body (``None`` when it was not JSON).
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fields: Optional[Mapping[str, str]] = None,
        *,
        details: Optional[List[Dict[str, str]]] = None,
        request_id: Optional[str] = None,
        body: Any = None,
    ) -> None:
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message
        self.fields: Dict[str, str] = dict(fields or {})
        self.details: List[Dict[str, str]] = list(details or [])
        self.request_id = request_id
        self.body = body

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.status!r}, {self.code!r}, {self.message!r}, {self.fields!r})"


class AuthError(ApiError):
    """401 (no or bad token) or 403 (the token's scope does not allow this)."""


class NotFoundError(ApiError):
    """404: no such job (or no job with that idempotency key)."""


class ConflictError(ApiError):
    """409: the request does not fit the job's state (cancel of an ended job, retry of
    a running one)."""


class TimeoutError(DroverError, builtins.TimeoutError):
    """A wait (``Client.wait``, ``Call.result``) ran out before the job ended.

    Also a builtin :class:`TimeoutError`. ``job`` is the job as last seen (``None`` if
    it could not be read), still not ended.
    """

    def __init__(self, message: str, job: Optional[Job] = None) -> None:
        super().__init__(message)
        self.job = job


class RemoteError(DroverError):
    """A Python function job did not return a value.

    For a function that raised, ``type``, ``module``, ``message`` and ``traceback``
    describe the remote exception (``ValueError``, ``builtins``, its text, the
    formatted remote traceback). For a job that ended otherwise (killed, timed out,
    canceled, agent lost) ``type`` is ``JobFailed``, ``JobTimedOut`` or ``JobCanceled``,
    ``module`` is ``drover``, ``message`` the job's error and ``traceback`` empty.
    ``job`` is the ended job.
    """

    def __init__(
        self,
        type: str,
        module: str,
        message: str,
        traceback: str = "",
        job: Optional[Job] = None,
    ) -> None:
        super().__init__(type, module, message, traceback)
        self.type = type
        self.module = module
        self.message = message
        self.traceback = traceback
        self.job = job

    def __str__(self) -> str:
        where = f" (job {self.job.id})" if self.job is not None else ""
        head = f"{self.type}: {self.message}{where}" if self.message else f"{self.type}{where}"
        if not self.traceback:
            return head
        return f"{head}\n\nRemote traceback:\n{self.traceback.rstrip()}"

    def __repr__(self) -> str:
        return f"RemoteError({self.type!r}, {self.module!r}, {self.message!r})"
