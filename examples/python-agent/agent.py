#!/usr/bin/env python3
"""A drover agent in Python, standard library only, written from drover's OpenAPI document.

It registers with a join token, long-polls for leases, runs `shell` and `process` jobs
(one thread per attempt, at most --slots at once), ships their stdout/stderr as numbered
log records, reports `::progress N message` lines, honours timeouts and cancels (SIGTERM
to the job's process group, SIGKILL after the job's grace period) and finishes each
attempt with its outcome, exit code and error. SIGTERM/SIGINT stop it: running jobs are
stopped and handed back to the queue, then the agent leaves.

    python3 agent.py --server http://127.0.0.1:7070 --token JOIN_TOKEN --slots 4 --labels py=yes
"""

import argparse
import hashlib
import http.client
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
import urllib.request
from datetime import datetime, timezone

VERSION = "python-agent/0.1"
PROG = "drover-python-agent"

# Limits the server enforces on log writes: 10,000 records a batch, 65 KiB a record,
# 8 MiB a request body by default (JSON escapes can grow text up to 6x).
BATCH_RECORDS = 1000
BATCH_BYTES = 1 << 20
MAX_LINE_BYTES = 64 * 1024
# Records kept in memory while the server cannot take them; beyond this lines are
# dropped, and the log says how many.
MAX_PENDING = 50_000
SHIP_EVERY_S = 0.25
# How long a stopping attempt keeps trying to flush its log and report its end.
FLUSH_DEADLINE_S = 60.0
FINISH_DEADLINE_S = 600.0


def say(msg):
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


def now_rfc3339():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def human_ms(ms):
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


class UsageError(Exception):
    pass


class ApiError(Exception):
    """The server answered with a non-2xx status and an `ErrorBody`."""

    def __init__(self, status, code, message):
        super().__init__(f"{message} (HTTP {status} {code})")
        self.status, self.code, self.message = status, code, message


class Unreachable(Exception):
    """No answer: connection refused or reset, timeout, a poll aborted on purpose."""


class Api:
    """A tiny JSON-over-HTTP client; one connection per call."""

    def __init__(self, server, ca_file=None):
        u = urllib.parse.urlsplit(server)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise UsageError(f"--server must be an http:// or https:// URL, not {server!r}")
        self.server = server
        self.https = u.scheme == "https"
        self.host, self.port = u.hostname, u.port
        self.prefix = u.path.rstrip("/")
        self.ctx = ssl.create_default_context(cafile=ca_file) if self.https else None

    def _connection(self, timeout):
        if self.https:
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=timeout, context=self.ctx
            )
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def call(self, method, path, token, body=None, timeout=30.0, track=None):
        """Returns the decoded JSON (or raw bytes, or None for an empty body)."""
        conn = self._connection(timeout)
        if track:
            track(conn)
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, self.prefix + path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise Unreachable(f"{method} {path}: {e or type(e).__name__}") from None
        finally:
            if track:
                track(None)
            conn.close()
        if 200 <= resp.status < 300:
            if not raw:
                return None
            if (resp.getheader("Content-Type") or "").startswith("application/json"):
                return json.loads(raw)
            return raw
        code, message = f"http_{resp.status}", raw.decode("utf-8", "replace")[:500]
        try:
            err = json.loads(raw)["error"]
            code, message = err["code"], err["message"]
        except (ValueError, KeyError, TypeError):
            pass
        raise ApiError(resp.status, code, message)


def parse_labels(text):
    labels = {}
    for item in filter(None, (p.strip() for p in (text or "").split(","))):
        k, sep, v = item.partition("=")
        if not sep or not k.strip():
            raise UsageError(f"--labels wants k=v,k2=v2; {item!r} has no '='")
        labels[k.strip()] = v.strip()
    return labels


def host_info():
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        memory = 0
    return {
        "hostname": socket.gethostname(),
        "os": platform.system().lower(),
        "arch": platform.machine(),
        "cpus": os.cpu_count() or 1,
        "memory_bytes": memory,
        "version": VERSION,
    }


def host_stats():
    """`AgentStats` for a poll: load as a share of the CPUs, and memory in use (Linux)."""
    try:
        cpu = min(100.0, os.getloadavg()[0] / (os.cpu_count() or 1) * 100)
    except (OSError, AttributeError):
        cpu = 0.0
    used = 0
    try:
        with open("/proc/meminfo") as f:
            info = {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in f)}
        used = max(0, info["MemTotal"] - info["MemAvailable"])
    except (OSError, KeyError, ValueError):
        pass
    return {"cpu_percent": round(cpu, 1), "memory_used_bytes": used}


def kill_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def safe_relative(path):
    """A workspace-relative path that cannot leave the workspace, or None."""
    if not path or os.path.isabs(path):
        return None
    parts = [p for p in path.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return os.path.join(*parts)


class Attempt:
    """One leased attempt: its process, its log shipper and its report."""

    def __init__(self, agent, lease):
        self.agent = agent
        self.api = agent.api
        self.lease = lease
        self.job_id = lease["job_id"]
        self.number = lease["attempt"]
        self.key = (self.job_id, self.number)
        self.base = f"/v1/jobs/{urllib.parse.quote(self.job_id, safe='')}/attempts/{self.number}"
        self.secrets = sorted(
            (v for v in (lease.get("secrets") or {}).values() if v), key=len, reverse=True
        )
        self.lock = threading.Lock()
        self.wake = threading.Event()  # the run loop: exit, stop request
        self.stop_reason = None  # canceled | timed_out | stale | shutdown | lease_lost
        # Log shipping state, under self.lock.
        self.pending = []
        self.next_seq = 1
        self.dropped = 0
        self.progress = None
        self.closing = False
        self.gave_up = False
        self.ship_wake = threading.Event()
        self.shipper = None
        self.thread = None
        self.pgid = None  # the job's process group, once it runs

    def __str__(self):
        return f"job {self.job_id} attempt {self.number}"

    # ---- orders from outside ----------------------------------------------------------

    def request_stop(self, reason):
        with self.lock:
            if self.stop_reason is None:
                self.stop_reason = reason
        self.wake.set()

    # ---- log records ------------------------------------------------------------------

    def mask(self, text):
        for s in self.secrets:
            text = text.replace(s, "***")
        return text

    def add(self, stream, text):
        with self.lock:
            if self.gave_up:
                return
            if len(self.pending) >= MAX_PENDING:
                self.dropped += 1
                return
            if self.dropped:
                self._append("system", f"[drover] {self.dropped} lines dropped: the server did not take the log fast enough")
                self.dropped = 0
            self._append(stream, text)
            if len(self.pending) >= BATCH_RECORDS:
                self.ship_wake.set()

    def _append(self, stream, text):
        self.pending.append(
            {"seq": self.next_seq, "ts": now_rfc3339(), "stream": stream, "text": text}
        )
        self.next_seq += 1

    def system(self, text):
        self.add("system", self.mask(text))

    def set_progress(self, line):
        parts = line[len("::progress "):].strip().split(None, 1)
        try:
            percent = float(parts[0].rstrip("%"))
        except (ValueError, IndexError):
            return
        if percent != percent or percent in (float("inf"), float("-inf")):
            return
        with self.lock:
            self.progress = {
                "percent": min(100.0, max(0.0, percent)),
                "message": parts[1].strip() if len(parts) > 1 else "",
            }

    def ship_loop(self):
        """Sends pending records (and the latest progress) until closed and drained."""
        backoff = 0.5
        close_deadline = None
        while True:
            self.ship_wake.wait(SHIP_EVERY_S)
            self.ship_wake.clear()
            with self.lock:
                batch, size = [], 0
                for r in self.pending:
                    if len(batch) >= BATCH_RECORDS or size + len(r["text"]) > BATCH_BYTES:
                        break
                    batch.append(r)
                    size += len(r["text"].encode()) + 64
                progress, self.progress = self.progress, None
                closing = self.closing
            if closing and close_deadline is None:
                close_deadline = time.monotonic() + FLUSH_DEADLINE_S
            ok = True
            if batch:
                ok = self._post(f"{self.base}/logs", {"records": batch}, "log batch")
                if ok:
                    with self.lock:
                        del self.pending[: len(batch)]
            if progress is not None and ok:
                self._post(f"{self.base}/progress", progress, "progress")
            with self.lock:
                if self.gave_up or (closing and not self.pending and self.progress is None):
                    return
            if not ok:
                if close_deadline is not None and time.monotonic() > close_deadline:
                    say(f"{self}: giving up on {len(self.pending)} log records")
                    return
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            else:
                backoff = 0.5

    def _post(self, path, body, what):
        """True when stored or refused for good (dropped); False to try again."""
        try:
            self.api.call("POST", path, self.agent.token, body)
            return True
        except ApiError as e:
            if e.status in (403, 404, 409):
                # stale_attempt (409): not ours any more; kill it, write nothing more.
                say(f"{self}: {what} refused, stopping the job: {e}")
                with self.lock:
                    self.gave_up = True
                self.request_stop("stale")
                return True
            if e.status in (400, 413):
                say(f"{self}: {what} refused and dropped: {e}")
                return True
            say(f"{self}: {what}: {e}; will retry")
            return False
        except Unreachable as e:
            say(f"{self}: {what}: {e}; will retry")
            return False

    def close_log(self):
        """Flushes every record (the server refuses log writes once the attempt ended)."""
        with self.lock:
            self.closing = True
        self.ship_wake.set()
        self.shipper.join()

    # ---- the attempt ------------------------------------------------------------------

    def run(self):
        self.shipper = threading.Thread(target=self.ship_loop, name=f"ship-{self.job_id}", daemon=True)
        self.shipper.start()
        workspace = None
        try:
            workspace = tempfile.mkdtemp(prefix=f"drover-{self.job_id}-{self.number}-", dir=self.agent.work_dir)
            self._run(workspace)
        except Exception as e:  # a bug here must still end the attempt
            traceback.print_exc()
            self.system(f"[drover] agent error: {e}")
            self.end("failed", None, f"agent error: {type(e).__name__}: {e}")
        finally:
            if workspace:
                shutil.rmtree(workspace, ignore_errors=True)
            self.agent.attempt_done(self)

    def _command(self):
        """(argv, header) for a kind this agent runs, or (None, error)."""
        ex = self.lease.get("exec") or {}
        kind = ex.get("kind")
        if kind == "shell":
            shell = shutil.which("bash") or "/bin/sh"
            return [shell, "-c", ex["command"]], f"$ {ex['command']}"
        if kind == "process":
            argv = ex.get("argv") or []
            if not argv:
                return None, "a process job needs a program: argv is empty"
            return list(argv), "$ " + shlex.join(argv)
        return None, f"this agent runs only shell and process jobs, not {kind!r} ones"

    def _run(self, workspace):
        argv, header = self._command()
        if argv is None:
            self.system(f"[drover] {header}")
            return self.end("failed", None, header)
        problem = self._inputs(workspace)
        if problem:
            self.system(f"[drover] {problem}")
            return self.end("failed", None, problem)
        if self.lease.get("artifacts"):
            self.system("[drover] this agent does not upload artifacts; the job's artifact patterns are ignored")
        if not self._start():
            return
        with self.lock:
            reason = self.stop_reason
        if reason:  # canceled (or told to stop) before its process started
            return self.stopped(reason, None)
        self.system(header)
        env = {k: v for k, v in os.environ.items() if not k.startswith("DROVER_")}
        env.update(self.lease.get("env") or {})
        env.update(self.lease.get("secrets") or {})
        env.update(DROVER_JOB_ID=self.job_id, DROVER_ATTEMPT=str(self.number), DROVER_WORKSPACE=workspace)
        try:
            # A new session makes the job its own process group (pgid == pid), so a stop
            # reaches everything it started, and a Ctrl-C at the agent's terminal does not.
            proc = subprocess.Popen(
                argv, cwd=workspace, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            )
        except OSError as e:
            msg = f"cannot start {argv[0]!r}: {e.strerror or e}"
            self.system(f"[drover] {msg}")
            return self.end("failed", 127 if isinstance(e, FileNotFoundError) else 126, msg)
        self.pgid = proc.pid
        say(f"{self}: started pid {proc.pid}")
        readers = [
            threading.Thread(target=self._read, args=(proc.stdout, "stdout"), daemon=True),
            threading.Thread(target=self._read, args=(proc.stderr, "stderr"), daemon=True),
        ]
        for r in readers:
            r.start()
        stopped_by = self._supervise(proc)
        for r in readers:
            r.join(timeout=5)
        if any(r.is_alive() for r in readers):
            self.system("[drover] output pipes were still open after the job ended; the rest of its output is lost")
        rc = proc.returncode
        exit_code = rc if rc >= 0 else 128 - rc
        if stopped_by:
            return self.stopped(stopped_by, exit_code)
        if rc == 0:
            return self.end("succeeded", 0, None)
        if rc > 0:
            return self.end("failed", rc, f"exit code {rc}")
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = str(-rc)
        return self.end("failed", exit_code, f"killed by signal {name}")

    def _supervise(self, proc):
        """Waits for the process; enforces timeout and stop orders. Returns why it was stopped."""
        exited = threading.Event()

        def waiter():
            proc.wait()
            exited.set()
            self.wake.set()

        threading.Thread(target=waiter, daemon=True).start()
        timeout_ms = self.lease.get("timeout_ms")
        deadline = time.monotonic() + timeout_ms / 1000 if timeout_ms is not None else None
        grace = (self.lease.get("grace_ms") or 0) / 1000
        stopped_by, kill_at, killed = None, None, False
        while True:
            # Sleep until the process exits, a stop is ordered, or the next deadline.
            due = [t for t in (None if stopped_by else deadline, None if killed else kill_at) if t is not None]
            self.wake.wait(max(0.0, min(due) - time.monotonic()) if due else None)
            self.wake.clear()
            if exited.is_set():
                if stopped_by:  # leave nothing of a stopped job behind
                    kill_group(proc.pid, signal.SIGKILL)
                return stopped_by
            now = time.monotonic()
            with self.lock:
                reason = self.stop_reason
            if reason is None and deadline is not None and now >= deadline:
                self.request_stop("timed_out")
                reason = "timed_out"
            if reason and not stopped_by:
                stopped_by = reason
                say(f"{self}: stopping ({reason}): SIGTERM, SIGKILL after {grace:g}s")
                kill_group(proc.pid, signal.SIGTERM)
                kill_at = now + grace
            if kill_at is not None and not killed and now >= kill_at:
                killed = True
                kill_group(proc.pid, signal.SIGKILL)

    def _read(self, pipe, stream):
        with pipe:
            for raw in iter(lambda: pipe.readline(MAX_LINE_BYTES), b""):
                if raw.endswith(b"\n"):
                    raw = raw[:-1]
                    if raw.endswith(b"\r"):
                        raw = raw[:-1]
                text = self.mask(raw.decode("utf-8", "replace"))
                if stream == "stdout" and text.startswith("::progress "):
                    self.set_progress(text)
                if len(text.encode()) <= MAX_LINE_BYTES:
                    self.add(stream, text)
                else:  # invalid bytes decode to 3-byte U+FFFD: split again, by characters
                    step = MAX_LINE_BYTES // 4
                    for i in range(0, len(text), step):
                        self.add(stream, text[i:i + step])

    def _inputs(self, workspace):
        """Puts the job's inputs into the workspace; returns a problem or None."""
        for index, inp in enumerate(self.lease.get("inputs") or []):
            rel = safe_relative(inp.get("path", ""))
            if rel is None:
                return f"input {inp.get('path')!r}: not a path inside the workspace"
            src = inp.get("from") or {}
            try:
                if "text" in src:
                    data = src["text"].encode()
                elif "file" in src:
                    data = self.api.call("GET", f"{self.base}/inputs/{index}", self.agent.token, timeout=300)
                    if not isinstance(data, bytes):
                        data = json.dumps(data).encode() if data is not None else b""
                elif "url" in src:
                    with urllib.request.urlopen(src["url"], timeout=300) as r:
                        data = r.read()
                else:
                    return f"input {rel}: unknown source {sorted(src)}"
            except (ApiError, Unreachable, OSError, ValueError) as e:
                return f"input {rel}: {e}"
            want = inp.get("sha256")
            if want and hashlib.sha256(data).hexdigest() != want.lower():
                return f"input {rel}: sha256 differs from the expected {want}"
            dest = os.path.join(workspace, rel)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, "wb") as f:
                f.write(data)
        return None

    def _start(self):
        """POST …/start. False when the attempt is not ours to run (any more)."""
        for delay in (0.5, 1, 2, 4, 8):
            try:
                self.api.call("POST", f"{self.base}/start", self.agent.token)
                return True
            except ApiError as e:
                if e.status >= 500:
                    say(f"{self}: start: {e}; will retry")
                else:
                    say(f"{self}: start refused, not running it: {e}")
                    self._drop_log()
                    return False
            except Unreachable as e:
                say(f"{self}: start: {e}; will retry")
            time.sleep(delay)
        say(f"{self}: could not start it; its lease will expire")
        self._drop_log()
        return False

    def _drop_log(self):
        with self.lock:
            self.gave_up = True
        self.ship_wake.set()

    # ---- the report -------------------------------------------------------------------

    def stopped(self, reason, exit_code):
        if reason == "timed_out":
            return self.end("timed_out", exit_code, f"timed out after {human_ms(self.lease.get('timeout_ms') or 0)}")
        if reason == "canceled":
            return self.end("canceled", exit_code, "canceled by user")
        if reason == "lease_lost":
            return self.end("failed", exit_code, "lease_lost: the agent could not reach the server to renew its lease in time")
        if reason == "shutdown":
            return self.release()
        # stale: the server says the attempt is not current; it wants no report.
        self._drop_log()
        say(f"{self}: killed, the attempt is no longer current")

    def end(self, outcome, exit_code, error):
        self.close_log()
        body = {"outcome": outcome, "exit_code": exit_code, "error": error}
        deadline = time.monotonic() + FINISH_DEADLINE_S
        delay = 0.5
        while True:
            try:
                job = self.api.call("POST", f"{self.base}/finish", self.agent.token, body)
                say(f"{self}: {outcome}" + (f" ({error})" if error else "") + f"; job is {job.get('state')}")
                return
            except ApiError as e:
                if e.status < 500 and e.status != 429:
                    say(f"{self}: finish refused: {e}")
                    return
                problem = e
            except Unreachable as e:
                problem = e
            if time.monotonic() > deadline or self.agent.stopping:
                say(f"{self}: could not report its end: {problem}")
                return
            say(f"{self}: finish: {problem}; will retry")
            time.sleep(delay)
            delay = min(delay * 2, 10.0)

    def release(self):
        """The agent is shutting down: give the job back to the queue."""
        self.system("[drover] the agent is shutting down; the job goes back to the queue")
        self.close_log()
        try:
            self.api.call("POST", f"{self.base}/release", self.agent.token)
            say(f"{self}: released")
        except (ApiError, Unreachable) as e:
            say(f"{self}: release: {e}")


class Agent:
    def __init__(self, args):
        self.args = args
        self.api = Api(args.server, args.ca_file)
        self.labels = parse_labels(args.labels)
        self.queues = [q for qs in args.queue for q in qs.split(",") if q.strip()]
        self.work_dir = args.work_dir
        self.token = None
        self.agent_id = None
        self.ttl_s = 30.0
        self.lock = threading.Lock()
        self.attempts = {}  # (job_id, attempt) -> Attempt
        self.taken = 0
        self.stopping = False
        self.stop_event = threading.Event()
        self.done = threading.Event()
        self.fatal = None
        self.signal = None
        self.poll_conn = None
        self.last_renew = time.monotonic()

    # ---- register / leave -------------------------------------------------------------

    def register(self):
        body = {
            "name": self.args.name,
            "slots": self.args.slots,
            "labels": self.labels,
            "queues": self.queues,
            "host": host_info(),
        }
        deadline = time.monotonic() + self.args.connect_timeout
        while True:
            try:
                resp = self.api.call("POST", "/v1/agents/register", self.args.token, body)
                break
            except ApiError as e:
                raise SystemExit(f"{PROG}: register at {self.api.server} refused: {e}")
            except Unreachable as e:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{PROG}: cannot reach the server at {self.api.server}: {e}")
                say(f"cannot reach the server ({e}); trying again")
                time.sleep(1)
        self.agent_id, self.token = resp["agent_id"], resp["token"]
        self.ttl_s = resp["lease_ttl_ms"] / 1000
        say(f"registered as {resp.get('name', self.args.name)} (id {self.agent_id}), "
            f"{self.args.slots} slots, labels {self.labels or '{}'}, lease ttl {self.ttl_s:g}s")

    def leave(self):
        try:
            self.api.call("POST", "/v1/agents/leave", self.token, timeout=10)
            say("left")
        except (ApiError, Unreachable) as e:
            say(f"leave: {e}")

    # ---- the poll loop ----------------------------------------------------------------

    def poll_loop(self):
        # The lease is renewed when a poll arrives, so a held poll must end well
        # within the lease TTL.
        wait_ms = int(min(60_000, max(1000, self.ttl_s * 1000 / 3)))
        backoff = 1.0
        while not self.stopping:
            with self.lock:
                running = [{"job_id": j, "attempt": n} for (j, n) in self.attempts]
                limit = self.args.exit_after_jobs
                draining = limit is not None and self.taken >= limit
            if draining and not running:
                self.done.set()
                return
            sent = time.monotonic()
            body = {"running": running, "wait_ms": wait_ms, "draining": draining, "stats": host_stats()}
            try:
                resp = self.api.call("POST", "/v1/agents/poll", self.token, body,
                                     timeout=wait_ms / 1000 + 30, track=self._track)
            except (Unreachable, ApiError) as e:
                if isinstance(e, ApiError) and e.status in (401, 403):
                    self.fatal = f"the server no longer accepts this agent: {e}"
                    self.done.set()
                    return
                if isinstance(e, Unreachable) and self.stopping:
                    return
                say(f"poll: {e}; trying again in {backoff:g}s")
                self._check_lease_lost()
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, max(1.0, self.ttl_s / 3))
                continue
            backoff = 1.0
            self.last_renew = sent
            for c in resp.get("controls", []):
                self._control(c)
            for lease in resp.get("leases", []):
                self._lease(lease)

    def _track(self, conn):
        self.poll_conn = conn

    def _control(self, c):
        kind = c.get("kind")
        if kind == "reconnect":
            say("the server is shutting down; polling again shortly")
            self.stop_event.wait(1.0)
            return
        with self.lock:
            att = self.attempts.get((c.get("job_id"), c.get("attempt")))
        if att is None:
            return  # already ended here
        if kind == "cancel":
            att.request_stop("canceled")
        elif kind == "kill":
            att.request_stop("stale")
        else:
            say(f"unknown control {c!r}; ignored")

    def _lease(self, lease):
        att = Attempt(self, lease)
        with self.lock:
            limit = self.args.exit_after_jobs
            over = self.stopping or (limit is not None and self.taken >= limit)
            if not over:
                self.taken += 1
                self.attempts[att.key] = att
        if over:  # not ours to run: hand it straight back
            try:
                self.api.call("POST", f"{att.base}/release", self.token)
            except (ApiError, Unreachable) as e:
                say(f"{att}: release: {e}")
            return
        say(f"{att}: leased ({lease.get('name')})")
        att.thread = threading.Thread(target=att.run, name=f"job-{att.job_id}", daemon=True)
        att.thread.start()

    def attempt_done(self, att):
        with self.lock:
            self.attempts.pop(att.key, None)

    def _check_lease_lost(self):
        if time.monotonic() - self.last_renew > self.ttl_s:
            with self.lock:
                atts = list(self.attempts.values())
            for att in atts:
                att.request_stop("lease_lost")

    # ---- shutdown ---------------------------------------------------------------------

    def on_signal(self, signum, _frame):
        if self.signal is not None:  # a second signal: stop now
            with self.lock:
                atts = list(self.attempts.values())
            for att in atts:
                if att.pgid is not None:
                    kill_group(att.pgid, signal.SIGKILL)
            os._exit(128 + signum)
        self.signal = signum

    def stop_all(self, reason):
        self.stopping = True
        self.stop_event.set()
        conn = self.poll_conn
        if conn is not None and conn.sock is not None:
            try:  # end the held poll now rather than when its wait runs out
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        with self.lock:
            atts = list(self.attempts.values())
        for att in atts:
            att.request_stop(reason)
        grace = max([(a.lease.get("grace_ms") or 0) / 1000 for a in atts] or [0])
        deadline = time.monotonic() + grace + FLUSH_DEADLINE_S
        for att in atts:
            if att.thread is not None:
                att.thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def run(self):
        self.register()
        poller = threading.Thread(target=self.poll_loop, name="poll", daemon=True)
        poller.start()
        while self.signal is None and not self.done.wait(0.5):
            pass
        if self.signal is not None:
            say(f"{signal.Signals(self.signal).name}: stopping running jobs and leaving")
            self.stop_all("shutdown")
            self.leave()
            return 0
        if self.fatal:
            say(self.fatal)
            self.stop_all("lease_lost")
            return 1
        say(f"ran {self.taken} jobs; leaving")
        self.stopping = True
        self.leave()
        return 0


def parse_args(argv):
    p = argparse.ArgumentParser(prog="agent.py", description="A drover agent in Python (standard library only).")
    p.add_argument("--server", default=os.environ.get("DROVER_SERVER", "http://127.0.0.1:7070"),
                   help="server URL [env DROVER_SERVER; default http://127.0.0.1:7070]")
    p.add_argument("--token", default=os.environ.get("DROVER_JOIN_TOKEN"),
                   help="join token [env DROVER_JOIN_TOKEN]")
    p.add_argument("--name", default=socket.gethostname(), help="agent name (default: the host name)")
    p.add_argument("--slots", type=int, default=os.cpu_count() or 1, help="jobs run at once (default: CPUs)")
    p.add_argument("--labels", default="", help="labels jobs may require, k=v,k2=v2")
    p.add_argument("--queue", action="append", default=[],
                   help="queue to take jobs from (repeatable or comma-separated; default: default)")
    p.add_argument("--exit-after-jobs", type=int, default=None, metavar="N",
                   help="leave after running N jobs (for tests)")
    p.add_argument("--work-dir", default=None, help="where job workspaces go (default: the temp dir)")
    p.add_argument("--ca-file", default=None, help="CA certificate (PEM) for an https:// server")
    p.add_argument("--connect-timeout", type=float, default=60.0,
                   help="give up registering when the server is unreachable this long (s)")
    args = p.parse_args(argv)
    if not args.token:
        p.error("--token (or DROVER_JOIN_TOKEN) is required")
    if not 1 <= args.slots <= 4096:
        p.error("--slots must be between 1 and 4096")
    if args.exit_after_jobs is not None and args.exit_after_jobs < 1:
        p.error("--exit-after-jobs must be at least 1")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        agent = Agent(args)
    except UsageError as e:
        say(str(e))
        return 2
    signal.signal(signal.SIGTERM, agent.on_signal)
    signal.signal(signal.SIGINT, agent.on_signal)
    return agent.run()


if __name__ == "__main__":
    sys.exit(main())
