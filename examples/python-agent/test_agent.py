#!/usr/bin/env python3
"""End-to-end tests of agent.py against a real drover server (standard library only).

    DROVER_BIN=target/debug/drover python3 examples/python-agent/test_agent.py

Starts `drover server` on a free port in a temporary directory, runs agent.py as a
subprocess, submits jobs through the HTTP API with the admin token and checks their
states, exit codes, errors and logs. Without DROVER_BIN every test is skipped. Every
wait is on a condition with a generous deadline, never a fixed sleep.
"""

import calendar
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request
from pathlib import Path

DROVER_BIN = os.environ.get("DROVER_BIN")
AGENT = Path(__file__).resolve().with_name("agent.py")
DEADLINE = 60.0
ADMIN, JOIN = "adm", "join"
ENDED = {"succeeded", "failed", "canceled", "timed_out"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env():
    """This environment without DROVER_* (a DROVER_DATABASE or DROVER_CONFIG here must
    not reach the test's server)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("DROVER_")}


def tail(path, lines=40):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError as e:
        return f"({e})"


def stop(proc, timeout=DEADLINE):
    """SIGTERM, then SIGKILL if it has not exited within `timeout`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def when(ts):
    """Seconds since the epoch of an RFC 3339 UTC time (`…T13:46:57.446Z`)."""
    base, _, frac = ts.rstrip("Z").replace("+00:00", "").partition(".")
    return calendar.timegm(time.strptime(base, "%Y-%m-%dT%H:%M:%S")) + float(f"0.{frac or 0}")


class Cluster:
    """A drover server in a temporary directory, and agents started against it."""

    def __init__(self, tmp):
        self.tmp = Path(tmp)
        self.procs = []
        self.server = None
        self.url = None

    def start_server(self):
        for _ in range(3):  # a free port can be taken before the server binds it
            port = free_port()
            self.url = f"http://127.0.0.1:{port}"
            log = open(self.tmp / "server.log", "ab")
            self.server = subprocess.Popen(
                [os.path.abspath(DROVER_BIN), "server", "--listen", f"127.0.0.1:{port}",
                 "--data", str(self.tmp / "data"), "--admin-token", ADMIN, "--join-token", JOIN],
                stdout=log, stderr=subprocess.STDOUT, env=child_env(),
            )
            log.close()
            self.procs.append(self.server)
            deadline = time.monotonic() + DEADLINE
            while time.monotonic() < deadline and self.server.poll() is None:
                try:
                    with urllib.request.urlopen(f"{self.url}/readyz", timeout=5) as r:
                        if r.status == 200:
                            return
                except (urllib.error.URLError, OSError):
                    pass
                time.sleep(0.1)
            stop(self.server)
        raise AssertionError(f"drover server did not get ready:\n{tail(self.tmp / 'server.log')}")

    def start_agent(self, name, *args):
        log = open(self.tmp / f"agent-{name}.log", "ab")
        proc = subprocess.Popen(
            [sys.executable, str(AGENT), "--server", self.url, "--token", JOIN, "--name", name,
             "--work-dir", str(self.tmp), *args],
            stdout=log, stderr=subprocess.STDOUT, env=child_env(),
        )
        log.close()
        self.procs.append(proc)
        return proc

    def stop_all(self):
        for proc in reversed(self.procs):  # agents first, the server last
            stop(proc)

    def diag(self):
        out = [f"--- server.log\n{tail(self.tmp / 'server.log')}"]
        for p in sorted(self.tmp.glob("agent-*.log")):
            out.append(f"--- {p.name}\n{tail(p)}")
        return "\n".join(out)

    # ---- the HTTP API ------------------------------------------------------------------

    def call(self, method, path, body=None, token=ADMIN):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                raw = r.read()
                return r.status, json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            return e.code, json.loads(raw) if raw else None

    def submit(self, label, exec_, **spec):
        status, job = self.call("POST", "/v1/jobs", {"exec": exec_, "labels": {"py": label}, **spec})
        assert status == 201, f"submit: HTTP {status}: {job}"
        return job["id"]

    def job(self, job_id):
        status, job = self.call("GET", f"/v1/jobs/{job_id}")
        assert status == 200, f"GET job {job_id}: HTTP {status}: {job}"
        return job

    def records(self, job_id, attempt=None):
        q = f"&attempt={attempt}" if attempt else ""
        status, page = self.call("GET", f"/v1/jobs/{job_id}/logs?limit=10000{q}")
        assert status == 200, f"GET logs {job_id}: HTTP {status}: {page}"
        return page["records"]

    def agent(self, name):
        status, body = self.call("GET", "/v1/agents")
        assert status == 200, f"GET agents: HTTP {status}: {body}"
        return next((a for a in body["agents"] if a["name"] == name), None)

    def wait_for(self, what, check, timeout=DEADLINE):
        """Calls `check` until it returns something truthy; fails after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            got = check()
            if got:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
            time.sleep(0.1)

    def wait_ended(self, job_id):
        def ended():
            job = self.job(job_id)
            return job if job["state"] in ENDED else None

        return self.wait_for(f"job {job_id} to end", ended)

    def wait_output(self, job_id, text):
        return self.wait_for(f"{text!r} in the log of job {job_id}",
                             lambda: any(r["text"] == text for r in self.records(job_id)))


def shell(command):
    return {"kind": "shell", "command": command}


def with_diagnostics(test):
    """Adds the server's and agents' log tails to a failure."""

    @functools.wraps(test)
    def run(self):
        try:
            test(self)
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.cluster.diag()}") from None

    return run


@unittest.skipUnless(DROVER_BIN, "set DROVER_BIN to the path of a drover binary to run these tests")
class PythonAgentTest(unittest.TestCase):
    """One server and one agent (labels py=yes, 4 slots) shared by the tests; tests that
    stop their agent start their own, with a label of their own."""

    @classmethod
    def setUpClass(cls):
        tmp = tempfile.mkdtemp(prefix="drover-python-agent-")
        cls.addClassCleanup(shutil.rmtree, tmp, True)
        cls.cluster = Cluster(tmp)
        cls.addClassCleanup(cls.cluster.stop_all)  # runs even when setUpClass fails
        cls.cluster.start_server()
        cls.cluster.start_agent("py", "--slots", "4", "--labels", "py=yes")

    def assertLines(self, job_id, stream, lines):
        got = [r["text"] for r in self.cluster.records(job_id) if r["stream"] == stream]
        self.assertEqual(got, lines, f"{stream} of job {job_id}")

    @with_diagnostics
    def test_stdout_stderr_and_progress(self):
        c = self.cluster
        command = "echo out1; echo err1 >&2; echo '::progress 40 reading'; echo out2; echo err2 >&2"
        job_id = c.submit("yes", shell(command))
        job = c.wait_ended(job_id)
        self.assertEqual((job["state"], job["exit_code"], job["error"]), ("succeeded", 0, None))
        self.assertEqual(job["progress"], {"percent": 40.0, "message": "reading"})
        records = c.records(job_id)
        self.assertEqual([r["seq"] for r in records], list(range(1, len(records) + 1)), "seq from 1 without gaps")
        self.assertLines(job_id, "system", [f"$ {command}"])
        self.assertLines(job_id, "stdout", ["out1", "::progress 40 reading", "out2"])
        self.assertLines(job_id, "stderr", ["err1", "err2"])

    @with_diagnostics
    def test_much_output_arrives_whole_and_in_order(self):
        c = self.cluster
        # 5,000 lines (several batches) and one 100,000-byte line (split at 64 KiB).
        job_id = c.submit("yes", shell("seq 1 5000; head -c 100000 /dev/zero | tr '\\0' x; echo; echo end"))
        job = c.wait_ended(job_id)
        self.assertEqual(job["state"], "succeeded")
        records = c.records(job_id)
        self.assertEqual([r["seq"] for r in records], list(range(1, len(records) + 1)))
        out = [r["text"] for r in records if r["stream"] == "stdout"]
        self.assertEqual(out[:5000], [str(i) for i in range(1, 5001)])
        self.assertEqual(out[5000:], ["x" * 65536, "x" * (100000 - 65536), "end"])

    @with_diagnostics
    def test_failing_job_reports_its_exit_code(self):
        c = self.cluster
        job_id = c.submit("yes", shell("echo before; exit 3"))
        job = c.wait_ended(job_id)
        self.assertEqual((job["state"], job["exit_code"], job["error"]), ("failed", 3, "exit code 3"))
        self.assertEqual(job["attempts"][0]["state"], "failed")
        self.assertLines(job_id, "stdout", ["before"])

    @with_diagnostics
    def test_timeout_stops_the_job(self):
        c = self.cluster
        job_id = c.submit("yes", shell("sleep 30"), timeout_ms=1000, grace_ms=10_000)
        job = c.wait_ended(job_id)
        self.assertEqual((job["state"], job["exit_code"], job["error"]),
                         ("timed_out", 143, "timed out after 1s"))
        ran = when(job["finished_at"]) - when(job["started_at"])
        self.assertLess(ran, 25, "stopped long before sleep 30 would have ended")

    @with_diagnostics
    def test_cancel_stops_a_running_job(self):
        c = self.cluster
        job_id = c.submit("yes", shell("echo started; sleep 30"), grace_ms=10_000)
        c.wait_output(job_id, "started")
        status, body = c.call("POST", f"/v1/jobs/{job_id}/cancel")
        self.assertEqual(status, 200, body)
        job = c.wait_ended(job_id)
        self.assertEqual((job["state"], job["exit_code"], job["error"]),
                         ("canceled", 143, "canceled by user"))

    @with_diagnostics
    def test_cancel_kills_a_job_ignoring_sigterm_after_grace(self):
        c = self.cluster
        job_id = c.submit("yes", shell("trap '' TERM; echo ready; sleep 30"), grace_ms=1000)
        c.wait_output(job_id, "ready")
        asked = time.monotonic()
        status, body = c.call("POST", f"/v1/jobs/{job_id}/cancel")
        self.assertEqual(status, 200, body)
        job = c.wait_ended(job_id)
        self.assertLess(time.monotonic() - asked, 25, "SIGKILL after the 1 s grace, not the end of sleep 30")
        self.assertEqual((job["state"], job["exit_code"], job["error"]),
                         ("canceled", 137, "canceled by user"))

    @with_diagnostics
    def test_process_argv_runs_without_a_shell(self):
        c = self.cluster
        job_id = c.submit("yes", {"kind": "process", "argv": ["printf", "%s\\n", "a b", "$HOME"]})
        job = c.wait_ended(job_id)
        self.assertEqual((job["state"], job["exit_code"]), ("succeeded", 0))
        self.assertLines(job_id, "stdout", ["a b", "$HOME"])

    @with_diagnostics
    def test_a_missing_program_fails_with_127(self):
        c = self.cluster
        job_id = c.submit("yes", {"kind": "process", "argv": ["/no/such/program"]})
        job = c.wait_ended(job_id)
        self.assertEqual((job["state"], job["exit_code"]), ("failed", 127))
        self.assertIn("No such file", job["error"])

    @with_diagnostics
    def test_other_exec_kinds_are_refused_with_a_clear_error(self):
        c = self.cluster
        job_id = c.submit("yes", {"kind": "script", "interpreter": "python3", "body": "print(1)"})
        job = c.wait_ended(job_id)
        self.assertEqual(job["state"], "failed")
        self.assertIsNone(job["exit_code"])
        self.assertEqual(job["error"], "this agent runs only shell and process jobs, not 'script' ones")
        self.assertLines(job_id, "system", [f"[drover] {job['error']}"])

    @with_diagnostics
    def test_env_and_masked_secrets(self):
        c = self.cluster
        job_id = c.submit("yes", shell('echo "$GREETING $TOKEN $DROVER_JOB_ID $DROVER_ATTEMPT"'),
                          env={"GREETING": "hello"}, secrets={"TOKEN": "s3cr3t-value"})
        job = c.wait_ended(job_id)
        self.assertEqual(job["state"], "succeeded")
        self.assertLines(job_id, "stdout", [f"hello *** {job_id} 1"])

    @with_diagnostics
    def test_jobs_run_concurrently_up_to_the_slots(self):
        c = self.cluster
        # Each job waits until all four have started: they finish only if they run at once.
        marks = Path(tempfile.mkdtemp(dir=c.tmp))
        wait_all = f"touch {marks}/$DROVER_JOB_ID; until [ $(ls {marks} | wc -l) -ge 4 ]; do sleep 0.05; done; echo together"
        ids = [c.submit("yes", shell(wait_all), timeout_ms=int(DEADLINE * 1000)) for _ in range(4)]
        for job_id in ids:
            job = c.wait_ended(job_id)
            self.assertEqual(job["state"], "succeeded", job)
            self.assertLines(job_id, "stdout", ["together"])

    @with_diagnostics
    def test_wrong_token_exits_1_with_the_servers_message(self):
        c = self.cluster
        proc = subprocess.Popen(
            [sys.executable, str(AGENT), "--server", c.url, "--token", "not-a-token", "--name", "bad"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
        )
        try:
            _, err = proc.communicate(timeout=DEADLINE)
        finally:
            stop(proc)
        self.assertEqual(proc.returncode, 1, err)
        self.assertIn("unknown token", err)
        self.assertIn("401", err)

    @with_diagnostics
    def test_exit_after_jobs(self):
        c = self.cluster
        proc = c.start_agent("once", "--slots", "1", "--labels", "py=once", "--exit-after-jobs", "2")
        ids = [c.submit("once", shell(f"echo job {i}")) for i in range(2)]
        self.assertEqual(proc.wait(DEADLINE), 0)
        for i, job_id in enumerate(ids):
            job = c.wait_ended(job_id)
            self.assertEqual(job["state"], "succeeded")
            self.assertLines(job_id, "stdout", [f"job {i}"])
        self.assertEqual(c.agent("once")["status"], "offline")

    @with_diagnostics
    def test_sigterm_gives_running_jobs_back_and_leaves(self):
        c = self.cluster
        proc = c.start_agent("leaver", "--slots", "1", "--labels", "py=leave")
        job_id = c.submit("leave", shell("echo running; sleep 30"), grace_ms=10_000)
        c.wait_output(job_id, "running")
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(DEADLINE), 0)
        job = c.job(job_id)
        self.assertEqual(job["state"], "queued", "a released job waits for another agent")
        self.assertEqual(job["attempts_used"], 0, "a released attempt does not count")
        self.assertIn("agent_shutdown", job["attempts"][0]["error"])
        self.assertEqual(c.agent("leaver")["status"], "offline")
        status, body = c.call("POST", f"/v1/jobs/{job_id}/cancel")
        self.assertEqual((status, body["state"]), (200, "canceled"))


if __name__ == "__main__":
    unittest.main(verbosity=2)
