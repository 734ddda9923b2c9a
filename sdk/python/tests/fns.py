"""Functions the Python-kind tests run on drover's agents (imported there through
``path=[<this directory>]``)."""

import os
import time
from typing import Any, Dict, List


def add(a: Any, b: Any) -> Any:
    """a + b."""
    return a + b


def describe(*args: Any, **kwargs: Any) -> Dict[str, Any]:
    """The arguments it was called with, as JSON."""
    return {"args": list(args), "kwargs": kwargs}


def boom(message: str = "boom") -> None:
    """Raises ValueError(message)."""
    raise ValueError(message)


def slow(seconds: float) -> float:
    """Sleeps, then returns how long."""
    time.sleep(seconds)
    return seconds


def wait_for_file(path: str, timeout: float = 60.0) -> bool:
    """Returns once ``path`` exists (a gate the test opens); raises after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear in {timeout}s")
        time.sleep(0.02)
    return True


def not_json() -> List[Any]:
    """Returns something JSON cannot hold."""
    return [object()]
