"""What the API returns, as Python objects: :class:`Job` and :class:`LogRecord`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Dict, Mapping, Optional

__all__ = ["Job", "LogRecord", "TERMINAL_STATES", "STATES", "parse_time"]

#: Every job state, in life order.
STATES = (
    "waiting",
    "queued",
    "leased",
    "running",
    "succeeded",
    "failed",
    "canceled",
    "timed_out",
)
#: The states a job never leaves (unless retried).
TERMINAL_STATES = frozenset({"succeeded", "failed", "canceled", "timed_out"})

_TIME = re.compile(
    r"^(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|z|[+-]\d{2}:?\d{2})?$"
)


def parse_time(value: Optional[str]) -> Optional[datetime]:
    """An RFC 3339 timestamp as the server writes it (``2026-11-23T13:04:05.678Z``) as
    an aware :class:`datetime`; ``None`` stays ``None``. Works on Python 3.9, whose
    ``fromisoformat`` takes neither ``Z`` nor milliseconds."""
    if value is None:
        return None
    m = _TIME.match(value)
    if m is None:
        raise ValueError(f"not an RFC 3339 timestamp: {value!r}")
    base, frac, zone = m.groups()
    text = base.replace(" ", "T")
    if frac:
        text += "." + (frac + "000000")[:6]
    if zone is None or zone in ("Z", "z"):
        text += "+00:00"
    elif ":" not in zone:
        text += zone[:3] + ":" + zone[3:]
    else:
        text += zone
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Job:
    """A job as the server last showed it.

    The fields most programs need are attributes; everything the server sent (exec,
    labels, env, attempts, progress, wait_reason …) is in ``raw``, the job's JSON as a
    dict. Times are aware UTC datetimes.
    """

    id: str
    name: str
    state: str
    queue: str
    priority: int
    exit_code: Optional[int]
    error: Optional[str]
    result: Any
    created_at: Optional[datetime]
    started_at: Optional[datetime]
    finished_at: Optional[datetime]
    attempts_used: int
    current_attempt: int
    cancel_requested: bool
    metadata: Any
    idempotency_key: Optional[str]
    raw: Dict[str, Any] = field(repr=False, compare=False)

    @property
    def done(self) -> bool:
        """Whether the job has ended: succeeded, failed, canceled or timed out."""
        return self.state in TERMINAL_STATES

    @property
    def succeeded(self) -> bool:
        """Whether the job ended in ``succeeded``."""
        return self.state == "succeeded"

    @property
    def progress(self) -> Optional[Dict[str, Any]]:
        """The job's last progress report, ``{"percent": …, "message": …}``, if any."""
        value = self.raw.get("progress")
        return value if isinstance(value, dict) else None

    @property
    def wait_reason(self) -> Optional[str]:
        """For a waiting or queued job read with :meth:`Client.get`: why it is not
        running yet."""
        value = self.raw.get("wait_reason")
        return value if isinstance(value, str) else None

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "Job":
        """Builds a Job from the API's JSON object."""
        data = dict(raw)
        return cls(
            id=str(data["id"]),
            name=str(data.get("name", "")),
            state=str(data["state"]),
            queue=str(data.get("queue", "default")),
            priority=int(data.get("priority") or 0),
            exit_code=data.get("exit_code"),
            error=data.get("error"),
            result=data.get("result"),
            created_at=parse_time(data.get("created_at")),
            started_at=parse_time(data.get("started_at")),
            finished_at=parse_time(data.get("finished_at")),
            attempts_used=int(data.get("attempts_used") or 0),
            current_attempt=int(data.get("current_attempt") or 0),
            cancel_requested=bool(data.get("cancel_requested", False)),
            metadata=data.get("metadata"),
            idempotency_key=data.get("idempotency_key"),
            raw=data,
        )


@dataclass(frozen=True)
class LogRecord:
    """One line of a job's output.

    ``seq`` numbers an attempt's records from 1; ``stream`` is ``stdout``, ``stderr`` or
    ``system`` (drover's own lines: the ``$ command`` header, notes about dropped or
    truncated output).
    """

    seq: int
    ts: Optional[datetime]
    stream: str
    text: str

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "LogRecord":
        """Builds a LogRecord from the API's JSON object."""
        return cls(
            seq=int(raw["seq"]),
            ts=parse_time(raw.get("ts")),
            stream=str(raw.get("stream", "stdout")),
            text=str(raw.get("text", "")),
        )
