"""A socket guard for the test suite: any attempt to reach another machine fails loudly.

The suite must pass, and test the same thing, with or without a network (issue 20). The loaders
obey ``CLIPCOMPARE_OFFLINE=1``; this guard proves it: it wraps ``socket.socket.connect`` /
``connect_ex`` / ``sendto`` / ``sendmsg`` and the name lookups (``getaddrinfo``,
``gethostbyname[_ex]``) so that any of them aimed at a non-local address raises
:class:`NetworkAccessError` *before* the system call, and appends one line to a log file.
conftest fails the test during which a line was written, and the whole run at its end.

Allowed: AF_UNIX and every non-IP family, loopback (127.0.0.0/8, ::1, ``localhost``), the
unspecified address (0.0.0.0, ::: a local bind/connect), numeric IP lookups (no traffic; a connect
to the address is checked), and lookups of this machine's own host name (torchrun resolves it; the
gloo rendezvous itself runs on loopback TCP, in C++, below this guard).

Deliberately standalone (no pytest, no clipcompare): ``sitecustomize.py`` beside it installs it in
every Python subprocess a test starts, when ``CLIPCOMPARE_TEST_NETGUARD`` names the log file.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import traceback
from collections.abc import Iterator
from pathlib import Path

ENV = "CLIPCOMPARE_TEST_NETGUARD"  # the log file; set: guard installed in subprocesses too
LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})


class NetworkAccessError(RuntimeError):
    """Raised instead of a network access. Not an OSError, so no "offline, fall back" handler swallows it
    silently (the log line is written anyway, for handlers that catch everything)."""


_state: dict[str, object] = {"log": None, "installed": False}


def _is_local_ip(text: str) -> bool | None:
    """True/False for an IP literal (loopback or unspecified counts as local); None for a host name."""
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])  # fe80::1%eth0: drop the scope
    except ValueError:
        return None
    if getattr(ip, "ipv4_mapped", None) is not None:  # ::ffff:127.0.0.1
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified


def _local_host(host: object, *, lookup: bool) -> bool:
    if host is None or host == "" or host == b"":
        return True
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return False
    is_ip = _is_local_ip(host)
    if is_ip is not None:
        return is_ip or lookup  # a numeric lookup sends nothing; a connect to it is checked
    name = host.lower().rstrip(".")
    if name in LOCAL_NAMES or name.endswith(".localhost"):
        return True
    return lookup and name == socket.gethostname().lower()


def _caller() -> str:
    """The innermost frame outside this module and ``socket``: who tried."""
    skip = {__file__, socket.__file__}
    for frame in reversed(traceback.extract_stack()):
        if frame.filename not in skip:
            return f"{frame.filename}:{frame.lineno} in {frame.name}"
    return "?"


def _record(kind: str, target: object) -> None:
    line = f"pid {os.getpid()}: {kind} {target!r} from {_caller()}"
    log = _state["log"]
    if log is not None:
        with open(log, "a", encoding="utf-8") as f:  # append: one line, whole, per attempt
            f.write(line.replace("\n", " ") + "\n")
    raise NetworkAccessError(f"the test suite is offline: {line}")


def _check_address(sock: socket.socket, address: object, kind: str) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6) and isinstance(address, tuple) and address:
        if not _local_host(address[0], lookup=False):
            _record(kind, address)


def _guard_connect(name: str) -> None:
    original = getattr(socket.socket, name)

    def guarded(self, address):
        _check_address(self, address, name)
        return original(self, address)

    guarded.__name__, guarded.__doc__ = name, original.__doc__
    setattr(socket.socket, name, guarded)


def _guard_sends() -> None:
    sendto, sendmsg = socket.socket.sendto, socket.socket.sendmsg

    def guarded_sendto(self, data, *rest):  # sendto(data, address) or sendto(data, flags, address)
        if rest:
            _check_address(self, rest[-1], "sendto")
        return sendto(self, data, *rest)

    def guarded_sendmsg(self, buffers, *rest):  # sendmsg(buffers[, ancdata[, flags[, address]]])
        if len(rest) >= 3:
            _check_address(self, rest[2], "sendmsg")
        return sendmsg(self, buffers, *rest)

    guarded_sendto.__doc__, guarded_sendmsg.__doc__ = sendto.__doc__, sendmsg.__doc__
    socket.socket.sendto, socket.socket.sendmsg = guarded_sendto, guarded_sendmsg


def _guard_lookup(name: str) -> None:
    original = getattr(socket, name)

    def guarded(host, *args, **kwargs):
        if not _local_host(host, lookup=True):
            _record(name, host)
        return original(host, *args, **kwargs)

    guarded.__name__, guarded.__doc__ = name, original.__doc__
    setattr(socket, name, guarded)


def install(log: str | os.PathLike | None) -> None:
    """Guard this process's sockets, appending each attempt to ``log`` (None: raise only). Idempotent."""
    _state["log"] = None if log is None else str(log)
    if _state["installed"]:
        return
    _guard_connect("connect")
    _guard_connect("connect_ex")
    _guard_sends()
    for name in ("getaddrinfo", "gethostbyname", "gethostbyname_ex"):
        _guard_lookup(name)
    _state["installed"] = True


def installed() -> bool:
    return bool(_state["installed"])


def log_path() -> Path | None:
    return None if _state["log"] is None else Path(_state["log"])


@contextlib.contextmanager
def logging_to(path: str | os.PathLike) -> Iterator[Path]:
    """Record attempts in ``path`` instead of the session's log for a while (a test of the guard itself)."""
    saved = _state["log"]
    _state["log"] = str(path)
    try:
        yield Path(path)
    finally:
        _state["log"] = saved
