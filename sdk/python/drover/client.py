"""The client: submit, read, wait for, cancel and retry jobs, read and follow their
logs, and call Python functions on drover's agents."""

from __future__ import annotations

import itertools
import json
import math
import os
import time
from datetime import timedelta
from typing import (
    Any,
    Callable,
    Dict,
    Generator,
    Iterable,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Union,
)

from . import _config
from ._http import SseEvent, Transport, segment, set_read_timeout, sse_events
from .errors import ConnectionError, DroverError, NotFoundError, RemoteError, TimeoutError
from .models import Job, LogRecord

__all__ = ["Client", "Call", "JobRef", "Seconds", "PathLike"]

#: A job named by its id, ``key:K`` (the job submitted with idempotency key K), a
#: :class:`Job` or a :class:`Call`.
JobRef = Union[str, Job, "Call"]
#: A duration in seconds, or a :class:`datetime.timedelta`.
Seconds = Union[int, float, timedelta]
#: A path as a string or an :class:`os.PathLike`.
PathLike = Union[str, "os.PathLike[str]"]

#: How long one read of a stream may block while nothing else limits it; the server
#: sends a keep-alive every 15 s, so a silent minute means a dead connection.
_STREAM_READ_S = 60.0
#: Consecutive failed connections a wait or a log follow survives (about a minute), so
#: that a server restart is not mistaken for the job's end.
_MAX_STREAM_FAILURES = 60
_EXIT_KINDS = {"failed": "JobFailed", "canceled": "JobCanceled", "timed_out": "JobTimedOut"}


def _seconds(value: Seconds, what: str) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds or a timedelta, not {type(value).__name__}")
    return float(value)


def _ms(value: Seconds, what: str) -> int:
    seconds = _seconds(value, what)
    if seconds < 0 or math.isnan(seconds):
        raise ValueError(f"{what} must not be negative")
    return int(math.ceil(seconds * 1000))


def _check_json(value: Any, what: str, function: str) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(
            f"{what} of {function} is not JSON-serializable ({type(value).__name__}): {e}"
        ) from None


def _function_name(function: Union[str, Callable[..., Any]]) -> str:
    if isinstance(function, str):
        return function
    module = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", None)
    if not module or not qualname:
        raise TypeError(f"cannot tell the module and name of {function!r}; pass 'module:function'")
    if module == "__main__" or "<" in qualname:
        raise ValueError(
            f"{qualname} is defined in __main__ or inside a function: the agent cannot import "
            "it; move it into a module and pass 'module:function'"
        )
    return f"{module}:{qualname}"


class Call:
    """A submitted Python function job: wait for it and get its return value.

    ``Call(client, job_id)`` makes one for a job submitted earlier.
    """

    def __init__(self, client: "Client", id: str, function: Optional[str] = None) -> None:
        self.client = client
        self.id = id
        self.function = function

    def __repr__(self) -> str:
        return f"Call(id={self.id!r}, function={self.function!r})"

    def job(self) -> Job:
        """The job as it is now."""
        return self.client.get(self.id)

    def wait(self, timeout: Optional[Seconds] = None) -> Job:
        """Waits until the job has ended and returns it; raises
        :class:`drover.TimeoutError` after ``timeout`` seconds."""
        return self.client.wait(self.id, timeout=timeout)

    def result(self, timeout: Optional[Seconds] = None) -> Any:
        """Waits until the job has ended and returns the function's return value.

        Raises :class:`drover.RemoteError` when it did not succeed (the function
        raised, or the job failed, timed out or was canceled) and
        :class:`drover.TimeoutError` when it has not ended within ``timeout`` seconds.
        """
        return call_result(self.wait(timeout))

    def cancel(self) -> Job:
        """Cancels the job (see :meth:`Client.cancel`)."""
        return self.client.cancel(self.id)


def call_result(job: Job) -> Any:
    """The return value of an ended Python function job, or the
    :class:`RemoteError` it stands for."""
    if job.state == "succeeded":
        return job.result
    exc = job.result.get("exception") if isinstance(job.result, dict) else None
    if isinstance(exc, dict):
        raise RemoteError(
            str(exc.get("type") or "Exception"),
            str(exc.get("module") or ""),
            str(exc.get("message") or ""),
            str(exc.get("traceback") or ""),
            job,
        )
    if not job.done:
        raise DroverError(f"job {job.id} has not ended (it is {job.state})")
    raise RemoteError(
        _EXIT_KINDS.get(job.state, "JobFailed"),
        "drover",
        job.error or f"the job ended {job.state}",
        "",
        job,
    )


class Client:
    """A connection to a drover server.

    ``server`` is a URL, several comma-separated, or a list (servers sharing one
    database: when one cannot be reached the next is tried). Without ``server`` and
    ``token`` the client looks where the ``drover`` CLI looks: ``DROVER_SERVER`` and
    ``DROVER_TOKEN``, then the context ``drover up`` wrote (``context.toml`` in
    ``$DROVER_CONFIG_DIR``, ``$XDG_CONFIG_HOME/drover`` or ``~/.config/drover``), then
    ``http://127.0.0.1:7070``; the context's token is only sent to the context's own
    server. ``ca_file`` (default ``DROVER_CA_FILE``) is a PEM certificate to trust for
    ``https://``; ``request_timeout`` bounds each ordinary request, in seconds.

    A client keeps no connection open and may be shared between threads.
    """

    def __init__(
        self,
        server: Union[str, Sequence[str], None] = None,
        token: Optional[str] = None,
        *,
        ca_file: Optional[str] = None,
        request_timeout: float = 30.0,
    ) -> None:
        cfg = _config.resolve(server, token, ca_file)
        if not cfg.token:
            raise DroverError(
                f"no token for {','.join(cfg.servers)}: pass token= or set DROVER_TOKEN "
                "(`drover up` prints one and saves it for this machine)"
            )
        self._http = Transport(
            cfg.servers,
            cfg.token,
            ca_file=cfg.ca_file,
            timeout=request_timeout,
            starting_until=cfg.starting_until,
        )

    def __repr__(self) -> str:
        return f"Client(server={','.join(self._http.servers)!r})"

    @property
    def servers(self) -> List[str]:
        """The servers' base URLs."""
        return list(self._http.servers)

    @property
    def server(self) -> str:
        """The server requests go to now."""
        return self._http.base

    # ------------------------------------------------------------------ jobs

    def submit(
        self,
        command: Optional[str] = None,
        *,
        argv: Optional[Sequence[str]] = None,
        exec: Optional[Mapping[str, Any]] = None,
        name: Optional[str] = None,
        queue: Optional[str] = None,
        priority: Union[str, int, None] = None,
        labels: Optional[Mapping[str, str]] = None,
        env: Optional[Mapping[str, str]] = None,
        secrets: Optional[Mapping[str, str]] = None,
        timeout: Optional[Seconds] = None,
        max_attempts: Optional[int] = None,
        metadata: Any = None,
        idempotency_key: Optional[str] = None,
        after: Any = None,
        **extra: Any,
    ) -> Job:
        """Submits a job and returns it (``POST /v1/jobs``).

        What to run is one of: ``command`` (a shell line, run with ``bash -c``),
        ``argv`` (a program and its arguments, no shell) or ``exec`` (the API's exec
        object as a dict, e.g. ``{"kind": "docker", "image": "alpine", "command":
        "ls"}``).

        Args:
            name: Shown in lists (default: the command).
            queue: Default ``default``.
            priority: ``low``, ``normal``, ``high``, ``critical`` or an integer;
                higher runs first.
            labels: Labels an agent must have.
            env: Environment variables of the job.
            secrets: Like ``env``, but never shown by the API and masked in logs.
            timeout: Kill the job after this many seconds (or a timedelta).
            max_attempts: Attempts in all, the first included (default 1).
            metadata: Any JSON value, kept with the job.
            idempotency_key: Submitting the same key again returns the first job
                instead of making a second one.
            after: Jobs to wait for: one or a list of job ids, ``key:K``, group ids,
                Jobs, Calls, ``(job, condition)`` pairs (condition ``ok``, ``any`` or
                ``failed``) or ``{"job": …, "condition": …}`` dicts.
            **extra: Any other field of the API's submit request, by its wire name
                (``grace_ms``, ``delay_ms``, ``run_at``, ``backoff``, ``inputs``,
                ``artifacts``, ``concurrency_key``, ``concurrency_limit``,
                ``log_path``).

        Raises:
            ApiError: The server refused the job; ``fields`` names every problem.
        """
        given = [x for x in (command, argv, exec) if x is not None]
        if len(given) != 1:
            raise TypeError("submit() needs exactly one of command, argv= or exec=")
        if command is not None:
            spec: Dict[str, Any] = {"kind": "shell", "command": command}
        elif argv is not None:
            if isinstance(argv, str):
                raise TypeError("argv= is a list of strings; pass a shell line as command")
            spec = {"kind": "process", "argv": list(argv)}
        else:
            assert exec is not None
            spec = dict(exec)
        body = self._job_body(
            spec,
            name=name,
            queue=queue,
            priority=priority,
            labels=labels,
            env=env,
            secrets=secrets,
            timeout=timeout,
            max_attempts=max_attempts,
            metadata=metadata,
            idempotency_key=idempotency_key,
            after=after,
            extra=extra,
        )
        return Job.from_dict(self._http.json("POST", "/v1/jobs", body=body))

    def _job_body(
        self,
        spec: Dict[str, Any],
        *,
        name: Optional[str],
        queue: Optional[str],
        priority: Union[str, int, None],
        labels: Optional[Mapping[str, str]],
        env: Optional[Mapping[str, str]],
        secrets: Optional[Mapping[str, str]],
        timeout: Optional[Seconds],
        max_attempts: Optional[int],
        metadata: Any,
        idempotency_key: Optional[str],
        after: Any,
        extra: Mapping[str, Any],
    ) -> Dict[str, Any]:
        body: Dict[str, Any] = {"exec": spec}
        named: Dict[str, Any] = {
            "name": name,
            "queue": queue,
            "priority": priority,
            "labels": dict(labels) if labels is not None else None,
            "env": dict(env) if env is not None else None,
            "secrets": dict(secrets) if secrets is not None else None,
            "timeout_ms": _ms(timeout, "timeout") if timeout is not None else None,
            "max_attempts": max_attempts,
            "metadata": metadata,
            "idempotency_key": idempotency_key,
            "after": _dependencies(after) if after is not None else None,
        }
        body.update({k: v for k, v in named.items() if v is not None})
        for key, value in extra.items():
            if key in body:
                raise TypeError(f"{key} is given twice (once as {key}=, once by another argument)")
            body[key] = value
        if metadata is not None:
            _check_json(metadata, "metadata", "the job")
        return body

    def get(self, job: JobRef) -> Job:
        """The job as it is now, with its attempts (``GET /v1/jobs/{id}``); ``job`` may
        be ``key:K`` for the job submitted with idempotency key K.

        Raises:
            NotFoundError: No such job.
        """
        return Job.from_dict(self._http.json("GET", self._path(self._id(job))))

    def cancel(self, job: JobRef) -> Job:
        """Cancels a job: a queued one at once; a running one is asked to stop (its
        ``cancel_requested`` is true until the agent confirms, then it is ``canceled``).

        Raises:
            ConflictError: The job has already ended.
        """
        return Job.from_dict(self._http.json("POST", self._path(self._id(job)) + "/cancel"))

    def retry(self, job: JobRef) -> Job:
        """Queues an ended job again with a fresh attempt budget.

        Raises:
            ConflictError: The job has not ended.
        """
        return Job.from_dict(self._http.json("POST", self._path(self._id(job)) + "/retry"))

    def list(
        self,
        state: Optional[str] = None,
        queue: Optional[str] = None,
        limit: Optional[int] = 100,
        *,
        name: Optional[str] = None,
        label: Optional[str] = None,
        group: Optional[str] = None,
    ) -> List[Job]:
        """Jobs, newest first: at most ``limit`` of them (``None``: all, page after
        page). ``label`` is ``key=value``: only jobs that require that label."""
        if limit is not None and limit < 1:
            raise ValueError("limit must be at least 1 (or None for all)")
        page_size = min(limit, 1000) if limit is not None else 1000
        jobs = self.iter_jobs(
            state, queue, name=name, label=label, group=group, page_size=page_size
        )
        return list(itertools.islice(jobs, limit))

    def iter_jobs(
        self,
        state: Optional[str] = None,
        queue: Optional[str] = None,
        *,
        name: Optional[str] = None,
        label: Optional[str] = None,
        group: Optional[str] = None,
        page_size: int = 100,
    ) -> Iterator[Job]:
        """Every job that matches, newest first, fetched ``page_size`` (1 to 1000) at a
        time as the iteration goes on."""
        query: Dict[str, Any] = {
            "state": state,
            "queue": queue,
            "name": name,
            "label": label,
            "group": group,
            "limit": page_size,
        }
        while True:
            page = self._http.json("GET", "/v1/jobs", query=query)
            for raw in page.get("jobs", []):
                yield Job.from_dict(raw)
            cursor = page.get("next_cursor")
            if not cursor:
                return
            query["cursor"] = cursor

    def wait(self, job: JobRef, timeout: Optional[Seconds] = None) -> Job:
        """Waits until the job has ended (succeeded, failed, canceled, timed out) and
        returns it. It listens to the job's event stream, so it returns as soon as the
        server knows; a dropped connection or a restarting server is waited out.

        Raises:
            drover.TimeoutError: ``timeout`` seconds passed first (also a builtin
                ``TimeoutError``; its ``job`` is the job as last seen).
            NotFoundError: No such job.
        """
        job_id = self._id(job)
        deadline = None if timeout is None else time.monotonic() + _seconds(timeout, "timeout")
        last = self.get(job_id)
        failures = 0
        while not last.done:
            self._check_deadline(deadline, last)
            try:
                resp = self._http.open(
                    "GET",
                    self._path(job_id) + "/events/stream",
                    timeout=_read_timeout(deadline),
                    accept="text/event-stream",
                )
            except ConnectionError:
                self._check_deadline(deadline, last)
                failures += 1
                if failures > _MAX_STREAM_FAILURES:
                    raise
                time.sleep(min(1.0, _read_timeout(deadline)))
                continue
            failures = 0
            try:
                for event in sse_events(resp):
                    if event.event == "job":
                        last = Job.from_dict(json.loads(event.data))
                        if last.done:
                            return last
                    elif event.event == "end":
                        break
                    self._check_deadline(deadline, last)
                    set_read_timeout(resp, _read_timeout(deadline))
            except OSError:
                pass  # read timeout or dropped connection: check the deadline, reconnect
            finally:
                resp.close()
            if not last.done:
                self._check_deadline(deadline, last)
                time.sleep(min(0.1, _read_timeout(deadline)))
        return last

    @staticmethod
    def _check_deadline(deadline: Optional[float], last: Optional[Job]) -> None:
        if deadline is not None and time.monotonic() >= deadline:
            where = f" (it is {last.state})" if last is not None else ""
            name = last.id if last is not None else "the job"
            raise TimeoutError(f"job {name} has not ended in time{where}", last)

    # ------------------------------------------------------------------ logs

    def logs(
        self,
        job: JobRef,
        follow: bool = False,
        *,
        attempt: Optional[int] = None,
        stream: Optional[str] = None,
        page_size: int = 1000,
    ) -> Iterator[str]:
        """The job's output, line by line: stdout and stderr in the order they were
        written, without drover's own ``system`` lines (the ``$ command`` header; see
        :meth:`log_records` for those).

        Without ``follow`` it yields what is stored now and stops. With ``follow`` it
        yields lines as they come until the job ends, following retries onto their
        new attempts. ``attempt`` picks one attempt (default the latest); ``stream``
        picks ``stdout`` or ``stderr``.
        """
        records = self.log_records(
            job, follow, attempt=attempt, stream=stream, page_size=page_size
        )
        return (r.text for r in records if stream is not None or r.stream != "system")

    def log_records(
        self,
        job: JobRef,
        follow: bool = False,
        *,
        attempt: Optional[int] = None,
        stream: Optional[str] = None,
        page_size: int = 1000,
    ) -> Iterator[LogRecord]:
        """Like :meth:`logs`, but yields whole :class:`LogRecord` objects (``seq``,
        ``ts``, ``stream``, ``text``), ``system`` records included."""
        job_id = self._id(job)
        if follow:
            return self._follow(job_id, attempt, stream)
        return self._pages(job_id, attempt, stream, page_size)

    def _pages(
        self, job_id: str, attempt: Optional[int], stream: Optional[str], page_size: int
    ) -> Iterator[LogRecord]:
        after = 0
        while True:
            query = {"after": after, "limit": page_size, "attempt": attempt, "stream": stream}
            page = self._http.json("GET", self._path(job_id) + "/logs", query=query)
            records = page.get("records", [])
            for raw in records:
                yield LogRecord.from_dict(raw)
            if not records or page.get("complete"):
                return
            # Later pages read the same attempt even if the job is retried meanwhile.
            attempt = int(page["attempt"])
            after = int(page["last_seq"])

    def _follow(
        self, job_id: str, attempt: Optional[int], stream: Optional[str]
    ) -> Iterator[LogRecord]:
        current = attempt
        if current is None:
            # Pin the current attempt, so a resumed stream cannot slip into a retry.
            now = self.get(job_id)
            current = now.current_attempt or None
        while True:
            done = yield from self._follow_attempt(job_id, current, stream)
            if attempt is not None:
                return
            # The attempt ended; the job may be retried with another one.
            while True:
                now = self.get(job_id)
                if now.current_attempt > done:
                    current = now.current_attempt
                    break
                if now.done:
                    return
                time.sleep(0.25)

    def _follow_attempt(
        self, job_id: str, attempt: Optional[int], stream: Optional[str]
    ) -> Generator[LogRecord, None, int]:
        """Follows one attempt's log over SSE to its ``end`` event and returns the
        attempt's number; after a dropped connection it resumes after the last record
        yielded, so no line is repeated or lost."""
        after = 0
        failures = 0
        while True:
            query = {"after": after, "attempt": attempt, "stream": stream}
            try:
                resp = self._http.open(
                    "GET",
                    self._path(job_id) + "/logs/stream",
                    query=query,
                    timeout=_STREAM_READ_S,
                    accept="text/event-stream",
                )
            except ConnectionError:
                failures += 1
                if failures > 2 * _MAX_STREAM_FAILURES:
                    raise
                time.sleep(0.5)
                continue
            failures = 0
            try:
                for event in sse_events(resp):
                    if event.event == "record":
                        record = LogRecord.from_dict(json.loads(event.data))
                        if record.seq > after:
                            after = record.seq
                            yield record
                    elif event.event == "end":
                        return _int(event, 0)
            except OSError:
                pass  # dropped or silent for too long: resume after the last record
            finally:
                resp.close()
            time.sleep(0.2)

    # ------------------------------------------------------------ python calls

    def call(
        self,
        function: Union[str, Callable[..., Any]],
        /,
        *args: Any,
        priority: Union[str, int, None] = None,
        queue: Optional[str] = None,
        labels: Optional[Mapping[str, str]] = None,
        timeout: Optional[Seconds] = None,
        python: Optional[str] = None,
        path: Union[PathLike, Sequence[PathLike], None] = None,
        **kwargs: Any,
    ) -> Call:
        """Runs ``function(*args, **kwargs)`` as a job on an agent and returns a
        :class:`Call` whose ``result()`` is the function's return value.

        ``function`` is ``"package.module:function"`` (or ``module:Class.method``), or a
        module-level function, which is named that way. The agent imports it with
        ``python`` (default ``python3``), with ``path`` (directories; relative ones
        from the job's workspace) in front of ``sys.path``; the SDK need not be
        installed there. Arguments and the return value travel as JSON.

        The keyword names ``priority``, ``queue``, ``labels``, ``timeout``, ``python``
        and ``path`` are the job's options; every other keyword argument goes to the
        function. For a function that takes one of those names, or for the other job
        options (``name``, ``env``, ``max_attempts``, ``idempotency_key`` …), use
        :meth:`submit_call`.

        Raises:
            TypeError: An argument is not JSON-serializable (the message names it).
        """
        return self.submit_call(
            function,
            args,
            kwargs,
            priority=priority,
            queue=queue,
            labels=labels,
            timeout=timeout,
            python=python,
            path=path,
        )

    def submit_call(
        self,
        function: Union[str, Callable[..., Any]],
        args: Iterable[Any] = (),
        kwargs: Optional[Mapping[str, Any]] = None,
        *,
        python: Optional[str] = None,
        path: Union[PathLike, Sequence[PathLike], None] = None,
        **options: Any,
    ) -> Call:
        """Like :meth:`call`, with the function's arguments passed as ``args`` and
        ``kwargs`` so that none of their names is taken; ``options`` are the keyword
        options of :meth:`submit` (``name``, ``queue``, ``priority``, ``labels``,
        ``env``, ``secrets``, ``timeout``, ``max_attempts``, ``metadata``,
        ``idempotency_key``, ``after`` and wire fields such as ``concurrency_key``)."""
        name = _function_name(function)
        args_list = list(args)
        kwargs_dict = dict(kwargs or {})
        for i, value in enumerate(args_list):
            _check_json(value, f"argument {i}", name)
        for key, value in kwargs_dict.items():
            if not isinstance(key, str):
                raise TypeError(f"keyword argument names of {name} must be strings, not {key!r}")
            _check_json(value, f"keyword argument {key!r}", name)
        spec: Dict[str, Any] = {
            "kind": "python",
            "function": name,
            "args": args_list,
            "kwargs": kwargs_dict,
        }
        if python is not None:
            spec["python"] = python
        if path is not None:
            paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
            spec["path"] = [os.fspath(p) for p in paths]
        job = self.submit(exec=spec, **{k: v for k, v in options.items() if v is not None})
        return Call(self, job.id, name)

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _path(job_id: str) -> str:
        return f"/v1/jobs/{segment(job_id)}"

    def _id(self, job: JobRef) -> str:
        """The id of the job ``job`` names; ``key:K`` is looked up by idempotency key."""
        if isinstance(job, (Job, Call)):
            return job.id
        if not isinstance(job, str):
            raise TypeError(f"a job is named by its id, key:K, a Job or a Call, not {type(job).__name__}")
        if not job.startswith("key:"):
            return job
        key = job[len("key:") :]
        page = self._http.json("GET", "/v1/jobs", query={"idempotency_key": key, "limit": 1})
        jobs = page.get("jobs", [])
        if not jobs:
            raise NotFoundError(
                404, "not_found", f"no job was submitted with idempotency key {key!r}"
            )
        return str(jobs[0]["id"])


def _dependencies(after: Any) -> List[Dict[str, Any]]:
    if isinstance(after, (str, Job, Call, Mapping)):
        after = [after]
    return [_dependency(item) for item in after]


def _dependency(item: Any) -> Dict[str, Any]:
    if isinstance(item, Mapping):
        return dict(item)
    if isinstance(item, tuple):
        if len(item) != 2:
            raise TypeError("a dependency pair is (job, condition)")
        job, condition = item
        return {"job": _ref(job), "condition": condition}
    return {"job": _ref(item)}


def _ref(job: Any) -> str:
    if isinstance(job, (Job, Call)):
        return job.id
    if isinstance(job, str):
        return job
    raise TypeError(f"a dependency is a job id, key:K, a Job or a Call, not {type(job).__name__}")


def _read_timeout(deadline: Optional[float]) -> float:
    if deadline is None:
        return _STREAM_READ_S
    return max(0.01, min(_STREAM_READ_S, deadline - time.monotonic()))


def _int(event: SseEvent, default: int) -> int:
    try:
        return int(event.data.strip())
    except ValueError:
        return default

