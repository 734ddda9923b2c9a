"""Tests of the SDK that need no drover server: configuration as the CLI resolves it,
the small TOML reader, error mapping, argument checks, the SSE reader, and moving on to
the next server (against a stand-in HTTP server in this process)."""

from __future__ import annotations

import io
import json
import os
import socket
import sys
import tempfile
import threading
import time
import unittest
from unittest import mock
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Mapping

TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(TESTS))  # this checkout's `drover`, not an installed one

import drover  # noqa: E402
from drover import _config  # noqa: E402
from drover._http import _error_for, segment, sse_events  # noqa: E402
from drover.client import call_result  # noqa: E402
from drover.models import parse_time  # noqa: E402


def write_context(directory: str, text: str) -> None:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "context.toml"), "w", encoding="utf-8") as f:
        f.write(text)


CONTEXT = 'server = "http://127.0.0.1:9999"\ntoken = "drc_ctx"\n'


class ConfigTest(unittest.TestCase):
    """Server and token come from the same places, in the same order, as the CLI's."""

    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.tmp = tmp.name
        self.ctx = os.path.join(self.tmp, "ctx")

    def resolve(self, env: Mapping[str, str], server: Any = None, token: Any = None) -> _config.Resolved:
        return _config.resolve(server, token, None, env=env)

    def test_the_context_fills_in_what_is_not_given(self) -> None:
        write_context(self.ctx, CONTEXT)
        r = self.resolve({"DROVER_CONFIG_DIR": self.ctx})
        self.assertEqual((r.servers, r.token), (["http://127.0.0.1:9999"], "drc_ctx"))
        # Just written: a refused connection is tried again for a while, as the CLI does.
        self.assertIsNotNone(r.starting_until)
        none = self.resolve({"DROVER_CONFIG_DIR": os.path.join(self.tmp, "nothing")})
        self.assertEqual((none.servers, none.token), (["http://127.0.0.1:7070"], None))

    def test_arguments_then_environment_then_context(self) -> None:
        write_context(self.ctx, CONTEXT)
        env = {
            "DROVER_CONFIG_DIR": self.ctx,
            "DROVER_SERVER": "http://env:7070/",
            "DROVER_TOKEN": "drc_env",
        }
        r = self.resolve(env)
        self.assertEqual((r.servers, r.token), (["http://env:7070"], "drc_env"))
        r = self.resolve(env, server="http://arg:1", token="drc_arg")
        self.assertEqual((r.servers, r.token), (["http://arg:1"], "drc_arg"))
        # An empty variable counts as unset.
        r = self.resolve({"DROVER_CONFIG_DIR": self.ctx, "DROVER_SERVER": "", "DROVER_TOKEN": ""})
        self.assertEqual((r.servers, r.token), (["http://127.0.0.1:9999"], "drc_ctx"))

    def test_a_context_token_is_not_sent_to_another_server(self) -> None:
        write_context(self.ctx, CONTEXT)
        r = self.resolve({"DROVER_CONFIG_DIR": self.ctx, "DROVER_SERVER": "http://elsewhere:7070"})
        self.assertEqual((r.servers, r.token), (["http://elsewhere:7070"], None))
        self.assertIsNone(r.starting_until)
        # The same server, written another way, is the context's own.
        r = self.resolve({"DROVER_CONFIG_DIR": self.ctx}, server="http://127.0.0.1:9999/")
        self.assertEqual(r.token, "drc_ctx")
        with mock.patch.dict(os.environ, {"DROVER_CONFIG_DIR": self.ctx}, clear=True):
            with self.assertRaises(drover.DroverError) as caught:
                drover.Client("http://elsewhere:7070")
        self.assertIn("no token", str(caught.exception))

    def test_several_servers(self) -> None:
        write_context(self.ctx, 'server = "http://a:1,http://b:2/"\ntoken = "drc_ctx"\n')
        r = self.resolve({"DROVER_CONFIG_DIR": self.ctx})
        self.assertEqual((r.servers, r.token), (["http://a:1", "http://b:2"], "drc_ctx"))
        r = self.resolve({"DROVER_CONFIG_DIR": self.ctx}, server=["http://a:1", "http://b:2"])
        self.assertEqual(r.token, "drc_ctx")
        with self.assertRaises(drover.DroverError):
            self.resolve({}, server="ftp://a")
        with self.assertRaises(drover.DroverError):
            self.resolve({}, server=" , ")

    def test_where_the_context_lives(self) -> None:
        self.assertEqual(_config.context_dir({"DROVER_CONFIG_DIR": "/ctx", "HOME": "/h"}), "/ctx")
        self.assertEqual(_config.context_dir({"XDG_CONFIG_HOME": "/xdg", "HOME": "/h"}), "/xdg/drover")
        self.assertEqual(_config.context_dir({"HOME": "/h"}), "/h/.config/drover")
        home = os.path.join(self.tmp, "home")
        write_context(os.path.join(home, ".config", "drover"), CONTEXT)
        self.assertEqual(self.resolve({"HOME": home}).token, "drc_ctx")

    def test_a_context_the_cli_would_refuse_is_ignored(self) -> None:
        for text in (
            CONTEXT + 'extra = "x"\n',  # the CLI denies unknown fields
            'server = "http://127.0.0.1:9999"\n',
            "server = 1\ntoken = 2\n",
            "not toml at all",
        ):
            write_context(self.ctx, text)
            r = self.resolve({"DROVER_CONFIG_DIR": self.ctx})
            self.assertEqual((r.servers, r.token), (["http://127.0.0.1:7070"], None), text)

    def test_the_small_toml_reader(self) -> None:
        text = (
            "# written by drover up\n"
            'server = "http://127.0.0.1:7070"  # comment\n'
            "\n"
            "token = 'drc_lit\\eral'\n"
            'quoted = "a\\"b\\\\c\\n\\u00e9\\U0001F600"\n'
            "n = 1_000\n"
            "yes = true\n"
        )
        want = {
            "server": "http://127.0.0.1:7070",
            "token": "drc_lit\\eral",
            "quoted": 'a"b\\c\né\U0001F600',
            "n": 1000,
            "yes": True,
        }
        self.assertEqual(_config._parse_flat_toml(text), want)
        self.assertEqual(_config.parse_toml(text), want)
        for bad in ('a = "open', "a = [1]", "[table]", 'a = "x" y', 'a = "1"\na = "2"', "= 1"):
            with self.assertRaises(ValueError, msg=bad):
                _config._parse_flat_toml(bad)


class ModelTest(unittest.TestCase):
    def test_timestamps(self) -> None:
        utc = timezone.utc
        self.assertEqual(parse_time("2026-11-23T13:04:05.678Z"), datetime(2026, 11, 23, 13, 4, 5, 678000, utc))
        self.assertEqual(parse_time("2026-11-23T13:04:05Z"), datetime(2026, 11, 23, 13, 4, 5, tzinfo=utc))
        self.assertEqual(
            parse_time("2026-11-23T13:04:05.123456789+01:00"),
            datetime(2026, 11, 23, 12, 4, 5, 123456, utc),
        )
        self.assertIsNone(parse_time(None))
        with self.assertRaises(ValueError):
            parse_time("yesterday")

    def test_a_job_from_its_json(self) -> None:
        job = drover.Job.from_dict(job_json(state="running", progress={"percent": 50.0, "message": "half"}))
        self.assertFalse(job.done)
        self.assertEqual(job.progress, {"percent": 50.0, "message": "half"})
        self.assertEqual(job.created_at, datetime(2026, 11, 25, 13, 10, 24, 570000, timezone.utc))
        self.assertEqual(job.raw["exec"]["kind"], "shell")
        self.assertTrue(drover.Job.from_dict(job_json(state="timed_out")).done)

    def test_how_an_ended_call_turns_out(self) -> None:
        self.assertEqual(call_result(drover.Job.from_dict(job_json(state="succeeded", result=[1]))), [1])
        # A function may return a dict with an "exception" key: success decides.
        value = {"exception": "none"}
        self.assertEqual(call_result(drover.Job.from_dict(job_json(state="succeeded", result=value))), value)
        raised = job_json(
            state="failed",
            error="KeyError: 'k'",
            result={"exception": {"type": "KeyError", "module": "builtins", "message": "'k'", "traceback": "Traceback…\nKeyError: 'k'\n"}},
        )
        with self.assertRaises(drover.RemoteError) as caught:
            call_result(drover.Job.from_dict(raised))
        e = caught.exception
        self.assertEqual((e.type, e.module, e.message), ("KeyError", "builtins", "'k'"))
        self.assertIn("Remote traceback:\nTraceback…", str(e))
        for state, kind in (("failed", "JobFailed"), ("canceled", "JobCanceled"), ("timed_out", "JobTimedOut")):
            with self.assertRaises(drover.RemoteError) as caught:
                call_result(drover.Job.from_dict(job_json(state=state, error="force-stop")))
            self.assertEqual((caught.exception.type, caught.exception.message), (kind, "force-stop"))
            self.assertEqual(str(caught.exception), f"{kind}: force-stop (job j1)")

    def test_errors_are_both_drover_and_builtin(self) -> None:
        self.assertTrue(issubclass(drover.TimeoutError, TimeoutError))
        self.assertTrue(issubclass(drover.TimeoutError, drover.DroverError))
        self.assertTrue(issubclass(drover.ConnectionError, ConnectionError))
        for cls in (drover.ApiError, drover.RemoteError, drover.NotFoundError, drover.AuthError, drover.ConflictError):
            self.assertTrue(issubclass(cls, drover.DroverError))


def job_json(**fields: Any) -> Dict[str, Any]:
    job: Dict[str, Any] = {
        "id": "j1",
        "name": "true",
        "queue": "default",
        "priority": 0,
        "state": "queued",
        "cancel_requested": False,
        "exec": {"kind": "shell", "command": "true"},
        "attempts_used": 0,
        "current_attempt": 0,
        "metadata": None,
        "idempotency_key": None,
        "result": None,
        "exit_code": None,
        "error": None,
        "created_at": "2026-11-25T13:10:24.570Z",
        "run_at": "2026-11-25T13:10:24.570Z",
        "started_at": None,
        "finished_at": None,
    }
    job.update(fields)
    return job


class WireTest(unittest.TestCase):
    def test_error_bodies(self) -> None:
        body = {
            "error": {
                "code": "invalid_spec",
                "message": "the job spec is invalid: queue: must not be empty",
                "details": [
                    {"field": "queue", "message": "must not be empty"},
                    {"field": "queue", "message": "is odd"},
                    {"field": "exec.command", "message": "must not be empty"},
                ],
            }
        }
        e = _error_for(400, json.dumps(body).encode())
        self.assertEqual((e.status, e.code), (400, "invalid_spec"))
        self.assertEqual(e.fields, {"queue": "must not be empty; is odd", "exec.command": "must not be empty"})
        self.assertEqual(len(e.details), 3)
        self.assertIsInstance(_error_for(404, b'{"error":{"code":"not_found","message":"no"}}'), drover.NotFoundError)
        self.assertIsInstance(_error_for(409, b'{"error":{"code":"conflict","message":"no"}}'), drover.ConflictError)
        self.assertIsInstance(_error_for(401, b"{}"), drover.AuthError)
        internal = _error_for(500, b'{"error":{"code":"internal","message":"quote 42","request_id":"42"}}')
        self.assertEqual((internal.code, internal.request_id), ("internal", "42"))
        gateway = _error_for(502, b"<html>bad gateway</html>")
        self.assertEqual(gateway.code, "http_error")
        self.assertIn("bad gateway", gateway.message)

    def test_ids_stay_one_path_segment(self) -> None:
        self.assertEqual(segment("01a2-b_c"), "01a2-b_c")
        self.assertEqual(segment("../x"), "%2E%2E%2Fx")
        self.assertEqual(segment("a b?c#d"), "a%20b%3Fc%23d")

    def test_server_sent_events(self) -> None:
        stream = io.BytesIO(
            b": keep-alive\n\n"
            b"event: record\nid: 1\ndata: {\"seq\":1}\n\n"
            b"data: two\r\ndata: lines\r\n\r\n"
            b"event: end\ndata: \n\n"
            b"event: cut off"
        )
        events = list(sse_events(stream))  # type: ignore[arg-type]
        self.assertEqual([(e.event, e.data, e.id) for e in events], [
            ("record", '{"seq":1}', "1"),
            ("message", "two\nlines", "1"),
            ("end", "", "1"),
        ])

    def test_arguments_are_checked_before_anything_is_sent(self) -> None:
        c = drover.Client("http://127.0.0.1:9", "drc_x")  # nothing listens there
        with self.assertRaises(TypeError) as caught:
            c.call("m:f", 1, object())
        self.assertIn("argument 1 of m:f", str(caught.exception))
        with self.assertRaises(TypeError) as caught:
            c.call("m:f", x=float("inf"))
        self.assertIn("keyword argument 'x' of m:f", str(caught.exception))
        with self.assertRaises(TypeError):
            c.submit_call("m:f", kwargs={1: 2})  # type: ignore[dict-item]
        with self.assertRaises(ValueError):
            c.call(lambda: 1)
        with self.assertRaises(TypeError):
            c.submit("true", argv=["true"])
        with self.assertRaises(ValueError):
            c.submit("true", timeout=-1)


class FakeServer:
    """A stand-in for drover on 127.0.0.1 that answers every request with ``job_json()``
    and notes the requests it saw."""

    def __init__(self) -> None:
        seen: List[Dict[str, Any]] = []
        self.seen = seen

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.answer()

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.answer(json.loads(self.rfile.read(length) or b"null"))

            def answer(self, body: Any = None) -> None:
                seen.append({"method": self.command, "path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                data = json.dumps(job_json()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def refused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


class TransportTest(unittest.TestCase):
    def setUp(self) -> None:
        self.fake = FakeServer()
        self.addCleanup(self.fake.close)

    def test_the_next_server_is_tried_when_one_refuses(self) -> None:
        c = drover.Client([refused_url(), self.fake.url], "drc_t")
        self.assertEqual(c.get("j1").id, "j1")
        self.assertEqual(c.server, self.fake.url)
        job = c.submit(
            "echo hi",
            priority="high",
            timeout=timedelta(seconds=1.5),
            labels={"gpu": "a100"},
            after=["key:first", ("j0", "any")],
            concurrency_key="k",
        )
        self.assertEqual(job.id, "j1")
        sent = self.fake.seen[-1]
        self.assertEqual((sent["method"], sent["path"], sent["auth"]), ("POST", "/v1/jobs", "Bearer drc_t"))
        self.assertEqual(sent["body"], {
            "exec": {"kind": "shell", "command": "echo hi"},
            "priority": "high",
            "timeout_ms": 1500,
            "labels": {"gpu": "a100"},
            "after": [{"job": "key:first"}, {"job": "j0", "condition": "any"}],
            "concurrency_key": "k",
        })
        c.call("pkg.mod:fn", 1, [2], priority="low", path=["/srv/code"], python="python3.12", x={"y": 1})
        self.assertEqual(self.fake.seen[-1]["body"], {
            "exec": {
                "kind": "python",
                "function": "pkg.mod:fn",
                "args": [1, [2]],
                "kwargs": {"x": {"y": 1}},
                "python": "python3.12",
                "path": ["/srv/code"],
            },
            "priority": "low",
        })

    def test_every_server_refusing_is_a_connection_error(self) -> None:
        c = drover.Client([refused_url(), refused_url()], "drc_t")
        started = time.monotonic()
        with self.assertRaises(drover.ConnectionError) as caught:
            c.get("j1")
        self.assertLess(time.monotonic() - started, 5)
        self.assertIn("cannot reach the drover server", str(caught.exception))

    def test_a_fresh_context_waits_for_its_server(self) -> None:
        # A context written moments ago by a `drover up` that may still be starting:
        # refused connections are tried again (here the server never comes: the retry
        # is cut short by making the context old).
        with tempfile.TemporaryDirectory() as tmp:
            url = refused_url()
            write_context(tmp, f'server = "{url}"\ntoken = "drc_ctx"\n')
            old = time.time() - 29.5
            os.utime(os.path.join(tmp, "context.toml"), (old, old))
            with mock.patch.dict(os.environ, {"DROVER_CONFIG_DIR": tmp}, clear=True):
                c = drover.Client()
            started = time.monotonic()
            with self.assertRaises(drover.ConnectionError):
                c.get("j1")
            took = time.monotonic() - started
            self.assertGreater(took, 0.2)
            self.assertLess(took, 5)


if __name__ == "__main__":
    unittest.main()
