"""Migration peer addresses: parsing ``HOST:PORT``, ``[IPv6]:PORT``, ``:PORT`` and ``unix:PATH``.

One job: turn what the user typed into ``(host, port)`` or ``("unix:PATH", 0)``, or a
ValueError that says what is wrong with it.
"""

from __future__ import annotations

import os

UNIX_PREFIX = "unix:"


def parse_address(text: str, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """Like :func:`parse_hostport`, plus ``unix:PATH`` -> (``"unix:PATH"``, 0)."""
    if isinstance(text, str) and text.startswith(UNIX_PREFIX):
        path = text[len(UNIX_PREFIX):]
        if not path or "\0" in path:
            raise ValueError(f"bad Unix socket address {text!r}; expected unix:PATH")
        if len(os.fsencode(path)) > 107:
            raise ValueError(f"Unix socket path too long ({len(path)} bytes, at most 107)")
        return UNIX_PREFIX + path, 0
    return parse_hostport(text, default_host=default_host)


def parse_hostport(text: str, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """``HOST:PORT`` / ``[V6]:PORT`` / ``:PORT`` -> (host, port); ValueError with a reason."""
    if not isinstance(text, str) or not text:
        raise ValueError("address is empty; expected HOST:PORT")
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1:end + 2] != ":":
            raise ValueError(f"bad address {text!r}; expected [IPv6]:PORT")
        host, port_s = text[1:end], text[end + 2:]
    else:
        host, sep, port_s = text.rpartition(":")
        if not sep:
            raise ValueError(f"bad address {text!r}; expected HOST:PORT")
        if ":" in host:
            raise ValueError(f"bad address {text!r}; write IPv6 addresses as [ADDR]:PORT")
    host = host or default_host
    if not port_s.isdigit():
        raise ValueError(f"bad port {port_s!r} in {text!r}; expected 0..65535")
    port = int(port_s)
    if port > 65535:
        raise ValueError(f"port {port} out of range 0..65535")
    if any(char.isspace() for char in host):
        raise ValueError(f"bad host {host!r}")
    return host, port
