"""drover: a Python client for the drover job runner.

Submit shell, process, container and Python function jobs, wait for them, read and
follow their logs, cancel and retry them::

    import drover

    client = drover.Client()          # DROVER_SERVER/DROVER_TOKEN, else `drover up`'s context
    job = client.submit("make test", timeout=600)
    for line in client.logs(job, follow=True):
        print(line)
    print(client.wait(job).state)

    total = client.call("mypkg.stats:mean", [1, 2, 3], priority="high").result(timeout=60)

Only the standard library is used.
"""

from .client import Call, Client, JobRef, Seconds, call_result
from .errors import (
    ApiError,
    AuthError,
    ConflictError,
    ConnectionError,
    DroverError,
    NotFoundError,
    RemoteError,
    TimeoutError,
)
from .models import STATES, TERMINAL_STATES, Job, LogRecord

__version__ = "0.1.0"

__all__ = [
    "Client",
    "Call",
    "Job",
    "LogRecord",
    "JobRef",
    "Seconds",
    "call_result",
    "STATES",
    "TERMINAL_STATES",
    "DroverError",
    "ApiError",
    "AuthError",
    "NotFoundError",
    "ConflictError",
    "ConnectionError",
    "TimeoutError",
    "RemoteError",
    "__version__",
]
