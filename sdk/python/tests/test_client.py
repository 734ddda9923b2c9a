"""Tests of the SDK against a running drover server.

They need ``DROVER_SERVER`` and ``DROVER_TOKEN`` (an admin token) and at least one agent
on the ``default`` queue, e.g. from ``drover up``::

    drover up --port 7171 --data /tmp/d &
    export DROVER_SERVER=http://127.0.0.1:7171
    export DROVER_TOKEN=...   # the admin token it printed (`admin` in /tmp/d/tokens.toml)
    python3 -m unittest discover -s sdk/python/tests -v

Without the two variables every test here is skipped, saying why. Jobs meant to stay
queued go to a queue of their own, which no agent serves.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
import unittest
import uuid
from typing import Iterable, List, Optional

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(TESTS))  # this checkout's `drover`, not an installed one
sys.path.insert(0, TESTS)

import drover  # noqa: E402
import fns  # noqa: E402

SERVER = os.environ.get("DROVER_SERVER")
TOKEN = os.environ.get("DROVER_TOKEN")
RUN = uuid.uuid4().hex[:8]
#: No agent serves this queue: jobs in it stay queued until canceled.
IDLE_QUEUE = f"sdk-idle-{RUN}"
#: Generous bounds for jobs on a busy machine; the tests wait on events, not on time.
LONG = 120.0


def setUpModule() -> None:
    if not SERVER or not TOKEN:
        raise unittest.SkipTest(
            "set DROVER_SERVER and DROVER_TOKEN (an admin token) to run the SDK's tests "
            "against a drover server, e.g. one started with `drover up`"
        )


def client() -> drover.Client:
    return drover.Client(SERVER, TOKEN)


def wait_for_state(c: drover.Client, job: drover.JobRef, states: Iterable[str]) -> drover.Job:
    """Reads the job until it is in one of ``states`` (or has ended otherwise)."""
    wanted = set(states)
    deadline = time.monotonic() + LONG
    while True:
        now = c.get(job)
        if now.state in wanted:
            return now
        if now.done or time.monotonic() > deadline:
            raise AssertionError(f"job {now.id} is {now.state}, never {sorted(wanted)}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ClientTest(unittest.TestCase):
    """Shell and process jobs: submit, wait, logs, cancel, retry, list, errors."""

    c: drover.Client

    @classmethod
    def setUpClass(cls) -> None:
        cls.c = client()

    def idle(self, command: str = "true", **options: object) -> drover.Job:
        """A job that stays queued (canceled when the test ends)."""
        options.setdefault("queue", IDLE_QUEUE)
        job = self.c.submit(command, **options)  # type: ignore[arg-type]
        self.addCleanup(self.cancel_quietly, job.id)
        return job

    def cancel_quietly(self, job_id: str) -> None:
        try:
            self.c.cancel(job_id)
        except drover.ConflictError:
            pass

    def test_submit_and_wait(self) -> None:
        job = self.c.submit(
            "echo hello; exit 3", name=f"sdk-exit-{RUN}", metadata={"run": RUN}, timeout=LONG
        )
        self.assertEqual(job.name, f"sdk-exit-{RUN}")
        self.assertIn(job.state, ("queued", "leased", "running", "failed"))
        self.assertEqual(job.raw["timeout_ms"], int(LONG * 1000))
        ended = self.c.wait(job, timeout=LONG)
        self.assertTrue(ended.done)
        self.assertFalse(ended.succeeded)
        self.assertEqual(ended.state, "failed")
        self.assertEqual(ended.exit_code, 3)
        self.assertEqual(ended.metadata, {"run": RUN})
        self.assertEqual(ended.attempts_used, 1)
        assert ended.created_at and ended.started_at and ended.finished_at
        self.assertLessEqual(ended.started_at, ended.finished_at)

        ok = self.c.wait(self.c.submit(argv=["sh", "-c", "exit 0"]), timeout=LONG)
        self.assertEqual((ok.state, ok.exit_code), ("succeeded", 0))
        # Waiting on an ended job answers at once.
        self.assertEqual(self.c.wait(ok.id, timeout=5).state, "succeeded")

    def test_logs_in_pages(self) -> None:
        job = self.c.submit("for i in 1 2 3 4 5; do echo line $i; done; echo oops >&2")
        self.c.wait(job, timeout=LONG)
        lines = ["line 1", "line 2", "line 3", "line 4", "line 5"]
        # Two records a page: the header, then full pages and a last one. stdout and
        # stderr are read from two pipes, so where "oops" falls among the lines varies.
        both = list(self.c.logs(job, page_size=2))
        self.assertEqual([line for line in both if line != "oops"], lines)
        self.assertEqual(sorted(both), sorted(lines + ["oops"]))
        self.assertEqual(list(self.c.logs(job.id)), both)
        self.assertEqual(list(self.c.logs(job, stream="stdout", page_size=2)), lines)
        self.assertEqual(list(self.c.logs(job, stream="stderr")), ["oops"])
        records = list(self.c.log_records(job))
        self.assertEqual(records[0].stream, "system")
        self.assertTrue(records[0].text.startswith("$ for i in"), records[0].text)
        self.assertEqual([r.seq for r in records], list(range(1, len(records) + 1)))
        self.assertIsNotNone(records[1].ts)

    def test_logs_follow(self) -> None:
        job = self.c.submit("for i in 1 2 3 4; do echo line $i; sleep 0.2; done")
        # Followed from before it starts to its end.
        lines = list(self.c.logs(job, follow=True))
        self.assertEqual(lines, ["line 1", "line 2", "line 3", "line 4"])
        self.assertEqual(self.c.get(job).state, "succeeded")
        # A canceled job that never ran ends the follow too.
        idle = self.idle()
        self.c.cancel(idle)
        self.assertEqual(list(self.c.logs(idle, follow=True)), [])

    def test_logs_follow_a_retried_job(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            marker = os.path.join(tmp, "tried")
            job = self.c.submit(
                f"echo start; test -e {marker} || {{ echo first; touch {marker}; exit 1; }}; echo second",
                max_attempts=2,
                backoff={"base_ms": 100, "cap_ms": 100},
            )
            # The follow goes on into the second attempt.
            lines = list(self.c.logs(job, follow=True))
        self.assertEqual(lines, ["start", "first", "start", "second"])
        ended = self.c.get(job)
        self.assertEqual((ended.state, ended.attempts_used), ("succeeded", 2))
        self.assertEqual(list(self.c.logs(job)), ["start", "second"])
        self.assertEqual(list(self.c.logs(job, attempt=1)), ["start", "first"])
        self.assertEqual(list(self.c.logs(job, follow=True, attempt=1)), ["start", "first"])

    def test_cancel_a_running_job(self) -> None:
        job = self.c.submit("sleep 300", name=f"sdk-long-{RUN}")
        self.addCleanup(self.cancel_quietly, job.id)
        wait_for_state(self.c, job, ["running"])
        asked = self.c.cancel(job)
        self.assertTrue(asked.cancel_requested or asked.state == "canceled", asked)
        ended = self.c.wait(job, timeout=LONG)
        self.assertEqual(ended.state, "canceled")
        with self.assertRaises(drover.ConflictError) as caught:
            self.c.cancel(job)
        self.assertEqual(caught.exception.status, 409)

    def test_retry(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            marker = os.path.join(tmp, "tried")
            # Fails the first time, succeeds once the marker exists.
            job = self.c.submit(f"test -e {marker} || {{ touch {marker}; exit 1; }}")
            self.assertEqual(self.c.wait(job, timeout=LONG).state, "failed")
            again = self.c.retry(job)
            self.assertEqual(again.id, job.id)
            ended = self.c.wait(again, timeout=LONG)
            self.assertEqual(ended.state, "succeeded")
            self.assertEqual(ended.current_attempt, 2)
        with self.assertRaises(drover.ConflictError):
            self.c.retry(self.idle())

    def test_list(self) -> None:
        queue = f"sdk-list-{uuid.uuid4().hex[:8]}"
        made = [self.idle(f"echo {i}", queue=queue) for i in range(3)]
        ids = {j.id for j in made}
        listed = self.c.list(queue=queue)
        self.assertEqual({j.id for j in listed}, ids)
        self.assertEqual([j.id for j in listed], [j.id for j in reversed(made)], "newest first")
        self.assertEqual(len(self.c.list(queue=queue, limit=2)), 2)
        self.assertEqual({j.id for j in self.c.list("queued", queue)}, ids)
        self.assertEqual(self.c.list("running", queue), [])
        # One job a page: the cursor is followed.
        paged = list(self.c.iter_jobs(queue=queue, page_size=1))
        self.assertEqual([j.id for j in paged], [j.id for j in listed])
        self.assertEqual({j.id for j in self.c.list(queue=queue, limit=None)}, ids)
        with self.assertRaises(drover.ApiError) as caught:
            self.c.list(state="sleeping")
        self.assertEqual((caught.exception.status, caught.exception.code), (400, "bad_request"))

    def test_get_by_idempotency_key(self) -> None:
        key = f"sdk-key-{uuid.uuid4().hex}"
        first = self.idle(idempotency_key=key)
        second = self.c.submit("true", queue=IDLE_QUEUE, idempotency_key=key)
        self.assertEqual(second.id, first.id)
        self.assertEqual(self.c.get(f"key:{key}").id, first.id)
        self.assertEqual(self.c.get(f"key:{key}").idempotency_key, key)
        self.assertEqual(self.c.cancel(f"key:{key}").state, "canceled")
        with self.assertRaises(drover.NotFoundError) as caught:
            self.c.get(f"key:{key}-missing")
        self.assertEqual(caught.exception.status, 404)

    def test_api_errors(self) -> None:
        with self.assertRaises(drover.ApiError) as caught:
            self.c.submit("  ", queue="", timeout=0)
        e = caught.exception
        self.assertEqual((e.status, e.code), (400, "invalid_spec"))
        self.assertEqual(set(e.fields), {"exec.command", "queue", "timeout_ms"})
        self.assertIn("must not be empty", e.fields["queue"])
        self.assertIn("exec.command", str(e))

        with self.assertRaises(drover.ApiError) as caught:
            self.c.submit("true", priority="urgent")
        self.assertEqual(caught.exception.code, "bad_request")
        self.assertIn("priority", caught.exception.message)

        with self.assertRaises(drover.NotFoundError) as missing:
            self.c.get("no-such-job")
        self.assertEqual((missing.exception.status, missing.exception.code), (404, "not_found"))
        self.assertIsInstance(missing.exception, drover.ApiError)

        with self.assertRaises(drover.AuthError) as refused:
            drover.Client(SERVER, "drc_not_a_token").list(limit=1)
        self.assertEqual(refused.exception.status, 401)

        with self.assertRaises(TypeError):
            self.c.submit()
        with self.assertRaises(TypeError):
            self.c.submit("true", timeout=1, timeout_ms=1000)

    def test_wait_timeout(self) -> None:
        job = self.idle()
        started = time.monotonic()
        with self.assertRaises(drover.TimeoutError) as caught:
            self.c.wait(job, timeout=0.5)
        took = time.monotonic() - started
        self.assertGreaterEqual(took, 0.5)
        self.assertLess(took, 10)
        self.assertIsInstance(caught.exception, TimeoutError)  # the builtin too
        job_seen: Optional[drover.Job] = caught.exception.job
        assert job_seen is not None
        self.assertEqual(job_seen.state, "queued")

    def test_the_next_server_when_one_cannot_be_reached(self) -> None:
        dead = f"http://127.0.0.1:{free_port()}"
        assert SERVER is not None
        c = drover.Client(f"{dead},{SERVER}", TOKEN)
        job = c.submit("true", queue=IDLE_QUEUE)
        self.addCleanup(self.cancel_quietly, job.id)
        self.assertEqual(c.get(job).id, job.id)
        self.assertEqual(c.server, SERVER.rstrip("/"))
        with self.assertRaises(drover.ConnectionError):
            drover.Client(dead, TOKEN).list(limit=1)


class PythonCallTest(unittest.TestCase):
    """Python function jobs. Skipped while the server does not know the python kind."""

    c: drover.Client

    @classmethod
    def setUpClass(cls) -> None:
        cls.c = client()
        try:
            probe = cls.c.submit_call("fns:add", (1, 2), queue=IDLE_QUEUE, path=[TESTS])
        except drover.ApiError as e:
            if e.status == 400 and "python" in e.message:
                raise unittest.SkipTest(f"the server does not run Python jobs yet: {e.message}")
            raise
        cls.c.cancel(probe.id)

    def call(self, function: str, *args: object, **kwargs: object) -> drover.Call:
        return self.c.call(function, *args, path=[TESTS], **kwargs)  # type: ignore[arg-type]

    def test_args_and_kwargs_give_a_value(self) -> None:
        self.assertEqual(self.call("fns:add", 2, b=3).result(timeout=LONG), 5)
        self.assertEqual(self.call("fns:add", "a", "b").result(timeout=LONG), "ab")
        got = self.call("fns:describe", 1, "two", [3.5, None], x={"y": True}).result(timeout=LONG)
        self.assertEqual(got, {"args": [1, "two", [3.5, None]], "kwargs": {"x": {"y": True}}})
        # A module-level function names itself.
        call = self.c.call(fns.add, 40, 2, path=[TESTS])
        self.assertEqual(call.function, "fns:add")
        self.assertEqual(call.result(timeout=LONG), 42)
        job = call.job()
        self.assertEqual((job.state, job.result), ("succeeded", 42))
        self.assertEqual(job.raw["exec"]["kind"], "python")

    def test_reserved_names_go_through_submit_call(self) -> None:
        call = self.c.submit_call(
            "fns:describe",
            args=[1],
            kwargs={"priority": "p", "timeout": 3, "path": "x"},
            priority="high",
            name=f"sdk-describe-{RUN}",
            path=[TESTS],
        )
        self.assertEqual(
            call.result(timeout=LONG),
            {"args": [1], "kwargs": {"priority": "p", "timeout": 3, "path": "x"}},
        )
        job = call.job()
        self.assertEqual((job.priority, job.name), (100, f"sdk-describe-{RUN}"))

    def test_a_remote_exception_is_raised_here(self) -> None:
        call = self.call("fns:boom", "no good")
        with self.assertRaises(drover.RemoteError) as caught:
            call.result(timeout=LONG)
        e = caught.exception
        self.assertEqual((e.type, e.module, e.message), ("ValueError", "builtins", "no good"))
        self.assertTrue(e.traceback.startswith("Traceback (most recent call last):"), e.traceback)
        self.assertIn("in boom", e.traceback)
        self.assertIn("Remote traceback:", str(e))
        self.assertIn('raise ValueError(message)', str(e))
        assert e.job is not None
        self.assertEqual(e.job.state, "failed")
        self.assertEqual(e.job.error, "ValueError: no good")
        # A return value JSON cannot hold fails the job too.
        with self.assertRaises(drover.RemoteError):
            self.call("fns:not_json").result(timeout=LONG)

    def test_priority_orders_the_calls(self) -> None:
        key = f"sdk-prio-{uuid.uuid4().hex[:8]}"
        with tempfile.TemporaryDirectory() as tmp:
            gate_file = os.path.join(tmp, "open")
            # The gate holds the key's one slot until the file exists, so the calls
            # below all wait behind it and then run one at a time, highest first.
            gate = self.c.submit_call(
                "fns:wait_for_file", (gate_file, LONG), concurrency_key=key, path=[TESTS]
            )
            calls: List[drover.Call] = []
            try:
                wait_for_state(self.c, gate.id, ["running"])
                for priority in ("low", "normal", "critical", "high"):
                    calls.append(
                        self.c.submit_call(
                            "fns:add",
                            (priority, ""),
                            priority=priority,
                            concurrency_key=key,
                            path=[TESTS],
                        )
                    )
            finally:
                open(gate_file, "w").close()
            self.assertTrue(gate.result(timeout=LONG))
            jobs = [self.c.wait(call, timeout=LONG) for call in calls]
        self.assertEqual([j.result for j in jobs], ["low", "normal", "critical", "high"])
        by_start = sorted(jobs, key=lambda j: (j.started_at, -j.priority))
        self.assertEqual([j.result for j in by_start], ["critical", "high", "normal", "low"])

    def test_result_timeout_then_cancel(self) -> None:
        call = self.call("fns:slow", 300)
        self.addCleanup(lambda: self.c.cancel(call.id) if not call.job().done else None)
        started = time.monotonic()
        with self.assertRaises(drover.TimeoutError):
            call.result(timeout=0.5)
        self.assertLess(time.monotonic() - started, 10)
        wait_for_state(self.c, call.id, ["running"])
        call.cancel()
        with self.assertRaises(drover.RemoteError) as caught:
            call.result(timeout=LONG)
        self.assertEqual((caught.exception.type, caught.exception.module), ("JobCanceled", "drover"))

    def test_a_job_timeout_is_a_remote_error(self) -> None:
        call = self.call("fns:slow", 300, timeout=1)
        with self.assertRaises(drover.RemoteError) as caught:
            call.result(timeout=LONG)
        self.assertEqual(caught.exception.type, "JobTimedOut")
        assert caught.exception.job is not None
        self.assertEqual(caught.exception.job.state, "timed_out")

    def test_arguments_must_be_json(self) -> None:
        with self.assertRaises(TypeError) as caught:
            self.c.call("fns:add", 1, {2, 3}, path=[TESTS])
        self.assertIn("argument 1 of fns:add", str(caught.exception))
        with self.assertRaises(TypeError) as caught:
            self.c.call("fns:add", 1, b=float("nan"), path=[TESTS])
        self.assertIn("keyword argument 'b'", str(caught.exception))


if __name__ == "__main__":
    unittest.main()
