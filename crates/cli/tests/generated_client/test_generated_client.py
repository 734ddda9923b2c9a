"""A client generated from drover's OpenAPI document by openapi-python-client, used
against a real server: submit, poll, read the log, follow it live, cancel.

Run by crates/cli/tests/generated_client.rs, which starts `drover up`, generates the
package and sets DROVER_SERVER (base URL), DROVER_TOKEN (an admin token) and GENERATED
(the folder holding the generated `drover_client` package). Every answer is parsed by
the generated models, so a document that does not describe what the server sends fails
here.
"""

import json
import os
import sys
import tempfile
import time
import unittest

import httpx


def _env(name):
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f"{name} is not set; crates/cli/tests/generated_client.rs sets it")
    return value


SERVER = _env("DROVER_SERVER")
TOKEN = _env("DROVER_TOKEN")
sys.path.insert(0, _env("GENERATED"))

from drover_client import AuthenticatedClient  # noqa: E402
from drover_client.api.jobs import cancel_job, get_job, submit_job  # noqa: E402
from drover_client.api.logs import follow, page  # noqa: E402
from drover_client.models.shell_exec import ShellExec  # noqa: E402
from drover_client.models.shell_exec_kind import ShellExecKind  # noqa: E402
from drover_client.models.job import Job  # noqa: E402
from drover_client.models.job_state import JobState  # noqa: E402
from drover_client.models.log_page import LogPage  # noqa: E402
from drover_client.models.log_record import LogRecord  # noqa: E402
from drover_client.models.stream import Stream  # noqa: E402
from drover_client.models.submit_request import SubmitRequest  # noqa: E402
from drover_client.models.submit_request_env import SubmitRequestEnv  # noqa: E402

# Every wait gives up after this long, saying what it waited for.
DEADLINE_S = 60.0
# Between two polls of a job's state.
POLL_S = 0.05
TERMINAL = {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELED, JobState.TIMED_OUT}
LINES = ["generated-client line 1", "generated-client line 2", "generated-client line 3"]


def new_client():
    # The read timeout stays above the follow stream's 15 s keep-alive.
    return AuthenticatedClient(
        base_url=SERVER,
        token=TOKEN,
        raise_on_unexpected_status=True,
        timeout=httpx.Timeout(10.0, read=60.0),
    )


def submit_shell(client, command, env=None):
    """Submits `command` through the generated `submit` operation; the created Job."""
    body = SubmitRequest(exec_=ShellExec(command=command, kind=ShellExecKind.SHELL))
    if env:
        body.env = SubmitRequestEnv()
        for key, value in env.items():
            body.env[key] = value
    answer = submit_job.sync_detailed(client=client, body=body)
    if answer.status_code != 201 or not isinstance(answer.parsed, Job):
        raise AssertionError(f"submit answered {answer.status_code}: {answer.content!r}")
    return answer.parsed


def fetch_job(client, job_id):
    answer = get_job.sync_detailed(job_id, client=client)
    if answer.status_code != 200 or not isinstance(answer.parsed, Job):
        raise AssertionError(f"get {job_id} answered {answer.status_code}: {answer.content!r}")
    return answer.parsed


def wait_for_state(client, job_id, states, what):
    """Polls the generated `get` operation until the job is in one of `states`."""
    start = time.monotonic()
    while True:
        job = fetch_job(client, job_id)
        if job.state in states:
            return job
        if job.state in TERMINAL:
            raise AssertionError(f"job {job_id} ended {job.state} while waiting for {what}: {job.error}")
        if time.monotonic() - start > DEADLINE_S:
            raise AssertionError(f"timed out after {DEADLINE_S}s waiting for {what}; job {job_id} is {job.state}")
        time.sleep(POLL_S)


def sse_events(lines):
    """(event, data) pairs of a Server-Sent Events stream, given its lines."""
    event, data = None, []
    for line in lines:
        if line == "":
            if event is not None or data:
                yield event or "message", "\n".join(data)
            event, data = None, []
        elif line.startswith(":"):
            continue  # keep-alive comment
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)


class GeneratedClientTest(unittest.TestCase):
    echo_job = None

    @classmethod
    def setUpClass(cls):
        cls.client = new_client()

    @classmethod
    def tearDownClass(cls):
        cls.client.get_httpx_client().close()

    def finished_echo_job(self):
        """A job that echoed LINES and ended, submitted once for the tests that need one."""
        cls = type(self)
        if cls.echo_job is None:
            command = "; ".join(f"echo '{line}'" for line in LINES)
            job = submit_shell(self.client, command)
            self.assertEqual(job.state, JobState.QUEUED)
            cls.echo_job = wait_for_state(self.client, job.id, TERMINAL, f"job {job.id} to end")
        return cls.echo_job

    def test_a_submitted_shell_job_runs_to_success(self):
        job = self.finished_echo_job()
        self.assertEqual(job.state, JobState.SUCCEEDED, job.error)
        self.assertEqual(job.exit_code, 0)
        self.assertIsInstance(job.exec_, ShellExec)
        self.assertEqual(job.exec_.kind, ShellExecKind.SHELL)
        self.assertGreaterEqual(job.attempts_used, 1)

    def test_the_log_page_holds_the_lines_the_job_printed(self):
        job = self.finished_echo_job()
        texts, after = [], 0
        start = time.monotonic()
        while True:
            answer = page.sync_detailed(job.id, client=self.client, after=after, stream="stdout")
            self.assertEqual(answer.status_code, 200, answer.content)
            self.assertIsInstance(answer.parsed, LogPage)
            for record in answer.parsed.records:
                self.assertIsInstance(record, LogRecord)
                self.assertEqual(record.stream, Stream.STDOUT)
                texts.append(record.text)
            after = answer.parsed.last_seq
            if answer.parsed.complete:
                break
            self.assertLess(time.monotonic() - start, DEADLINE_S, f"log of {job.id} never complete; read {texts}")
        self.assertEqual(texts, LINES)

    def test_following_a_running_job_sees_lines_printed_after_the_follow_began(self):
        # The job prints one line, then waits for a file that this test creates only
        # once that line came through the follow stream: the second line is printed
        # after the follow began, so it can only be seen live.
        with tempfile.TemporaryDirectory() as tmp:
            go = os.path.join(tmp, "go")
            command = (
                'echo before-go; n=0; while [ ! -e "$GO" ]; do n=$((n+1)); '
                'if [ $n -gt 1200 ]; then echo "no go file" >&2; exit 1; fi; sleep 0.05; done; '
                "echo after-go"
            )
            job = submit_shell(self.client, command, env={"GO": go})
            # The generated `follow` operation reads the whole answer before it returns
            # (and types the 200 as `Any`): the document can say `text/event-stream`
            # but a generated client cannot read a stream as it arrives. So the request
            # the generated module builds (`_get_kwargs`) is sent through the generated
            # client's own httpx client, streaming, and each event's data is parsed by
            # the generated LogRecord model.
            request = follow._get_kwargs(job.id, stream="stdout")
            seen, ended = [], False
            start = time.monotonic()
            with self.client.get_httpx_client().stream(**request) as response:
                if response.status_code != 200:
                    self.fail(f"follow answered {response.status_code}: {response.read()!r}")
                self.assertTrue(response.headers["content-type"].startswith("text/event-stream"))
                for event, data in sse_events(response.iter_lines()):
                    self.assertLess(time.monotonic() - start, DEADLINE_S, f"follow of {job.id} saw only {seen}")
                    if event == "end":
                        ended = True
                        break
                    self.assertEqual(event, "record", data)
                    record = LogRecord.from_dict(json.loads(data))
                    seen.append(record.text)
                    if record.text == "before-go":
                        open(go, "w").close()
            self.assertTrue(ended, f"the stream closed without an end event; saw {seen}")
            self.assertEqual(seen, ["before-go", "after-go"])
            job = wait_for_state(self.client, job.id, TERMINAL, f"job {job.id} to end")
            self.assertEqual(job.state, JobState.SUCCEEDED, job.error)

    def test_cancel_ends_a_running_job_canceled(self):
        job = submit_shell(self.client, "sleep 60")
        wait_for_state(self.client, job.id, {JobState.RUNNING}, f"job {job.id} to run")
        answer = cancel_job.sync_detailed(job.id, client=self.client)
        self.assertEqual(answer.status_code, 200, answer.content)
        self.assertIsInstance(answer.parsed, Job)
        self.assertTrue(
            answer.parsed.cancel_requested or answer.parsed.state == JobState.CANCELED,
            f"cancel answered {answer.parsed.state} without cancel_requested",
        )
        started = time.monotonic()
        job = wait_for_state(self.client, job.id, TERMINAL, f"canceled job {job.id} to end")
        self.assertEqual(job.state, JobState.CANCELED, job.error)
        # Well before the 60 s the command would take on its own.
        self.assertLess(time.monotonic() - started, 30.0)


if __name__ == "__main__":
    unittest.main()
