"""HTTP with the standard library: requests to one server or several (the next one is
tried when a connection cannot be made), error bodies mapped to :class:`ApiError`, and
a reader of Server-Sent Events."""

from __future__ import annotations

import errno
import http.client
import json
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional

from .errors import ApiError, AuthError, ConflictError, ConnectionError, DroverError, NotFoundError

__all__ = ["Transport", "SseEvent", "sse_events", "set_read_timeout", "segment"]

USER_AGENT = "drover-python/0.1.0"

#: Errors that mean the request never reached the server: safe to send elsewhere.
_NOT_REACHED = {
    errno.ECONNREFUSED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.EADDRNOTAVAIL,
    getattr(errno, "EHOSTDOWN", errno.EHOSTUNREACH),
}


def segment(s: str) -> str:
    """``s`` percent-encoded as one path segment, as the CLI does it: only
    ``A-Z a-z 0-9 - _ ~`` stay as they are, so an id such as ``../x`` names a job, never
    another route."""
    return urllib.parse.quote(s, safe="").replace(".", "%2E")


def _never_reached(reason: object) -> bool:
    if isinstance(reason, (ConnectionRefusedError, socket.gaierror)):
        return True
    return isinstance(reason, OSError) and reason.errno in _NOT_REACHED


def _refused(reason: object) -> bool:
    return isinstance(reason, ConnectionRefusedError) or (
        isinstance(reason, OSError) and reason.errno == errno.ECONNREFUSED
    )


def _error_for(status: int, text: bytes) -> ApiError:
    """The ApiError (or subclass) for an error answer with body ``text``."""
    body: Any = None
    try:
        body = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        body = None
    detail = body.get("error") if isinstance(body, dict) else None
    if isinstance(detail, dict):
        code = str(detail.get("code") or "error")
        message = str(detail.get("message") or "")
        raw_details = detail.get("details") or []
        details: List[Dict[str, str]] = [
            {"field": str(d.get("field", "")), "message": str(d.get("message", ""))}
            for d in raw_details
            if isinstance(d, dict)
        ]
        request_id = detail.get("request_id")
    else:
        code = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found"}.get(
            status, "http_error"
        )
        message = f"HTTP {status}: {text.decode('utf-8', 'replace').strip()[:500]}"
        details, request_id = [], None
    fields: Dict[str, str] = {}
    for d in details:
        fields[d["field"]] = (
            f"{fields[d['field']]}; {d['message']}" if d["field"] in fields else d["message"]
        )
    cls = {401: AuthError, 403: AuthError, 404: NotFoundError, 409: ConflictError}.get(status, ApiError)
    return cls(
        status,
        code,
        message,
        fields,
        details=details,
        request_id=str(request_id) if request_id is not None else None,
        body=body,
    )


class Transport:
    """Sends requests with the token to the current server; on a connection that cannot
    be made it moves on to the next server (a GET also after other network failures,
    since it can be repeated)."""

    def __init__(
        self,
        servers: List[str],
        token: str,
        *,
        ca_file: Optional[str] = None,
        timeout: float = 30.0,
        starting_until: Optional[float] = None,
    ) -> None:
        self.servers = list(servers)
        self.timeout = timeout
        self._token = token
        self._current = 0
        self._starting_until = starting_until
        handlers: List[urllib.request.BaseHandler] = []
        if ca_file:
            context = ssl.create_default_context()
            context.load_verify_locations(cafile=ca_file)
            handlers.append(urllib.request.HTTPSHandler(context=context))
        self._opener = urllib.request.build_opener(*handlers)

    @property
    def base(self) -> str:
        """The server requests go to now."""
        return self.servers[self._current % len(self.servers)]

    def open(
        self,
        method: str,
        path: str,
        *,
        query: Optional[Mapping[str, Any]] = None,
        body: Any = None,
        timeout: Optional[float] = None,
        accept: str = "application/json",
    ) -> http.client.HTTPResponse:
        """Sends a request and returns the open response of a 2xx answer; raises
        :class:`ApiError` for an error answer and :class:`ConnectionError` when no
        server answered."""
        if query:
            pairs = [(k, _query_value(v)) for k, v in query.items() if v is not None]
            path = f"{path}?{urllib.parse.urlencode(pairs)}" if pairs else path
        headers = {
            "Authorization": f"Bearer {self._token}",
            "Accept": accept,
            "User-Agent": USER_AGENT,
        }
        data: Optional[bytes] = None
        if body is not None:
            data = json.dumps(body, allow_nan=False).encode("utf-8")
            headers["Content-Type"] = "application/json"
        elif method in ("POST", "PUT", "PATCH"):
            data = b""
        tried = 0
        while True:
            base = self.base
            req = urllib.request.Request(base + path, data=data, headers=headers, method=method)
            try:
                resp: http.client.HTTPResponse = self._opener.open(
                    req, timeout=self.timeout if timeout is None else timeout
                )
                return resp
            except urllib.error.HTTPError as e:
                try:
                    text = e.read()
                except (OSError, http.client.HTTPException):
                    text = b""
                finally:
                    e.close()
                raise _error_for(e.code, text) from None
            except urllib.error.URLError as e:
                reason = e.reason
                if not isinstance(reason, OSError):
                    raise DroverError(f"cannot send the request to {base}: {reason}") from None
                movable = method == "GET" or _never_reached(reason)
                if movable and tried + 1 < len(self.servers):
                    tried += 1
                    self._current += 1
                    continue
                if (
                    _refused(reason)
                    and self._starting_until is not None
                    and time.monotonic() < self._starting_until
                ):
                    # A `drover up` that wrote its context moments ago may still be
                    # starting: as the CLI, try again until the context is 30 s old.
                    time.sleep(0.1)
                    tried = 0
                    continue
                raise self._connect_error(reason) from None
            except (OSError, http.client.HTTPException) as e:
                # The connection was made, then dropped or timed out before an answer.
                if method == "GET" and tried + 1 < len(self.servers):
                    tried += 1
                    self._current += 1
                    continue
                raise self._connect_error(e) from None

    def _connect_error(self, reason: object) -> ConnectionError:
        where = " or ".join(self.servers)
        return ConnectionError(
            f"cannot reach the drover server at {where} ({reason}); is it running? "
            "start one with `drover up`"
        )

    def json(
        self,
        method: str,
        path: str,
        *,
        query: Optional[Mapping[str, Any]] = None,
        body: Any = None,
    ) -> Any:
        """Sends a request and decodes the JSON answer (``None`` for an empty one)."""
        resp = self.open(method, path, query=query, body=body)
        try:
            text = resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise self._connect_error(e) from None
        finally:
            resp.close()
        if not text.strip():
            return None
        try:
            return json.loads(text.decode("utf-8"))
        except ValueError as e:
            raise DroverError(f"unexpected answer from {path}: {e}") from None


def _query_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


@dataclass(frozen=True)
class SseEvent:
    """One Server-Sent Event: its ``event`` name (``message`` when absent), its
    ``data`` lines joined with newlines, and its ``id``."""

    event: str
    data: str
    id: Optional[str]


def sse_events(resp: http.client.HTTPResponse) -> Iterator[SseEvent]:
    """The events of a ``text/event-stream`` response, as they arrive, until the server
    closes it. A read timeout surfaces as the socket's ``TimeoutError``."""
    event = ""
    data: List[str] = []
    last_id: Optional[str] = None
    seen = False
    while True:
        raw = resp.readline()
        if not raw:
            return
        line = raw.decode("utf-8", "replace")
        if line.endswith("\n"):
            line = line[:-1]
        if line.endswith("\r"):
            line = line[:-1]
        if line == "":
            if seen:
                yield SseEvent(event or "message", "\n".join(data), last_id)
            event, data, seen = "", [], False
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            event, seen = value, True
        elif name == "data":
            data.append(value)
            seen = True
        elif name == "id":
            last_id = value


def set_read_timeout(resp: http.client.HTTPResponse, seconds: float) -> None:
    """Changes how long the next read of an open response may block (best effort: the
    socket sits behind private attributes of ``http.client``)."""
    raw = getattr(getattr(resp, "fp", None), "raw", None)
    sock = getattr(raw, "_sock", None)
    if isinstance(sock, socket.socket):
        try:
            sock.settimeout(max(seconds, 0.001))
        except OSError:
            pass
