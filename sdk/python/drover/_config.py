"""Where the client finds its server and token, exactly as the ``drover`` CLI does.

Order: the arguments, then ``DROVER_SERVER`` / ``DROVER_TOKEN``, then the context file
``drover up`` writes (``context.toml`` in ``$DROVER_CONFIG_DIR``, else
``$XDG_CONFIG_HOME/drover``, else ``~/.config/drover``), then
``http://127.0.0.1:7070``. The context's token is only used for the context's own
server. A server may be several URLs, comma-separated (servers on one database).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .errors import DroverError

DEFAULT_SERVER = "http://127.0.0.1:7070"
#: How long a context counts as just written by a ``drover up`` that may still be
#: starting (the CLI's ``FRESH_CONTEXT``): until then a refused connection is retried.
FRESH_CONTEXT_S = 30.0


@dataclass(frozen=True)
class Context:
    """The client context ``drover up`` writes: a server (URL list) and its admin token."""

    server: str
    token: str


@dataclass(frozen=True)
class Resolved:
    """A resolved client configuration."""

    servers: List[str]
    token: Optional[str]
    ca_file: Optional[str]
    #: Until when (``time.monotonic()``) a refused connection is retried, because the
    #: server came from a context a ``drover up`` wrote moments ago.
    starting_until: Optional[float]


def _var(env: Mapping[str, str], key: str) -> Optional[str]:
    value = env.get(key)
    return value if value else None


def context_dir(env: Mapping[str, str]) -> str:
    """``$DROVER_CONFIG_DIR``, else ``$XDG_CONFIG_HOME/drover``, else ``~/.config/drover``."""
    explicit = _var(env, "DROVER_CONFIG_DIR")
    if explicit:
        return explicit
    xdg = _var(env, "XDG_CONFIG_HOME")
    if xdg:
        return os.path.join(xdg, "drover")
    return os.path.join(_var(env, "HOME") or ".", ".config", "drover")


def server_urls(servers: Union[str, Sequence[str]]) -> List[str]:
    """One URL or several (a comma-separated string or a list), without trailing
    slashes; each must start with ``http://`` or ``https://``."""
    parts = servers.split(",") if isinstance(servers, str) else list(servers)
    urls = [u.strip().rstrip("/") for u in parts]
    urls = [u for u in urls if u]
    if not urls:
        raise DroverError("no server URL given")
    for u in urls:
        if not (u.startswith("http://") or u.startswith("https://")):
            raise DroverError(f"server URL {u!r} must start with http:// or https://")
    return urls


def read_context(directory: str) -> Optional[Context]:
    """The context in ``directory/context.toml``; ``None`` when it is missing or is not
    exactly ``server`` and ``token`` strings (as the CLI, which ignores such a file)."""
    try:
        with open(os.path.join(directory, "context.toml"), encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return None
    try:
        data = parse_toml(text)
    except ValueError:
        return None
    if set(data) != {"server", "token"}:
        return None
    server, token = data["server"], data["token"]
    if not isinstance(server, str) or not isinstance(token, str):
        return None
    return Context(server=server, token=token)


def parse_toml(text: str) -> Dict[str, object]:
    """A TOML document of top-level keys: ``tomllib`` where there is one (3.11+), else
    a small parser for the flat ``key = "string"`` files drover writes."""
    if sys.version_info >= (3, 11):
        import tomllib

        try:
            return dict(tomllib.loads(text))
        except tomllib.TOMLDecodeError as e:
            raise ValueError(str(e)) from None
    return _parse_flat_toml(text)


_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}


def _parse_flat_toml(text: str) -> Dict[str, object]:
    """Top-level ``key = "basic"`` / ``key = 'literal'`` / integer / boolean pairs,
    comments and blank lines; anything else (tables, arrays, multi-line strings) is a
    ValueError."""
    out: Dict[str, object] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        key, eq, rest = stripped.partition("=")
        key = key.strip()
        if len(key) >= 2 and key[0] == key[-1] and key[0] in "\"'":
            key = key[1:-1]
        if not eq or not key or key in out:
            raise ValueError(f"line {number}: expected a new key = value")
        value, tail = _toml_value(rest.strip(), number)
        tail = tail.strip()
        if tail and not tail.startswith("#"):
            raise ValueError(f"line {number}: unexpected {tail!r} after the value")
        out[key] = value
    return out


def _toml_value(s: str, number: int) -> Tuple[object, str]:
    if s.startswith("'") and not s.startswith("'''"):
        end = s.find("'", 1)
        if end < 0:
            raise ValueError(f"line {number}: unterminated string")
        return s[1:end], s[end + 1 :]
    if s.startswith('"') and not s.startswith('"""'):
        chars: List[str] = []
        i = 1
        while i < len(s):
            c = s[i]
            if c == '"':
                return "".join(chars), s[i + 1 :]
            if c == "\\":
                if i + 1 >= len(s):
                    break
                e = s[i + 1]
                if e in _ESCAPES:
                    chars.append(_ESCAPES[e])
                    i += 2
                    continue
                if e in "uU":
                    width = 4 if e == "u" else 8
                    digits = s[i + 2 : i + 2 + width]
                    if len(digits) != width:
                        raise ValueError(f"line {number}: bad \\{e} escape")
                    chars.append(chr(int(digits, 16)))
                    i += 2 + width
                    continue
                raise ValueError(f"line {number}: bad escape \\{e}")
            chars.append(c)
            i += 1
        raise ValueError(f"line {number}: unterminated string")
    word, _, tail = s.partition("#")
    word = word.strip()
    if word in ("true", "false"):
        return word == "true", ("#" + tail if tail else "")
    try:
        return int(word.replace("_", "")), ("#" + tail if tail else "")
    except ValueError:
        raise ValueError(f"line {number}: unsupported value {s!r}") from None


def resolve(
    server: Union[str, Sequence[str], None],
    token: Optional[str],
    ca_file: Optional[str],
    env: Optional[Mapping[str, str]] = None,
) -> Resolved:
    """Arguments, then environment, then the context, as ``drover`` resolves them."""
    env = os.environ if env is None else env
    given_server: Union[str, Sequence[str], None] = server
    if given_server is None:
        given_server = _var(env, "DROVER_SERVER")
    given_token = token if token is not None else _var(env, "DROVER_TOKEN")
    directory = context_dir(env)
    ctx = read_context(directory)
    if given_server is None:
        given_server = ctx.server if ctx is not None else DEFAULT_SERVER
    urls = server_urls(given_server)
    ours = ctx is not None and _same_servers(ctx.server, urls)
    if given_token is None and ctx is not None and ours:
        given_token = ctx.token
    starting_until: Optional[float] = None
    if ours:
        try:
            age = time.time() - os.stat(os.path.join(directory, "context.toml")).st_mtime
        except OSError:
            age = FRESH_CONTEXT_S
        if 0 <= age < FRESH_CONTEXT_S:
            starting_until = time.monotonic() + (FRESH_CONTEXT_S - age)
    return Resolved(
        servers=urls,
        token=given_token,
        ca_file=ca_file if ca_file is not None else _var(env, "DROVER_CA_FILE"),
        starting_until=starting_until,
    )


def _same_servers(ctx_server: str, urls: List[str]) -> bool:
    try:
        return server_urls(ctx_server) == urls
    except DroverError:
        return False
