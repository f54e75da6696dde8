"""The suite is sealed off from the network: the download switch is set, the socket guard refuses and
records every attempt (here and in subprocesses), and a swallowed attempt still fails the run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import netguard
import open_clip
import pytest

from clipcompare.models.loading import load_model
from clipcompare.models.spec import parse_spec
from helpers import make_image

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"
TEST_NET = "192.0.2.1"  # TEST-NET-1 (RFC 5737): never routed; and the guard raises before the syscall anyway


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ["PYTHONPATH"]]), **extra}


def test_the_suite_runs_with_downloads_switched_off_and_the_guard_installed():
    assert os.environ["CLIPCOMPARE_OFFLINE"] == "1" and os.environ["HF_HUB_OFFLINE"] == "1"
    assert netguard.installed() and netguard.log_path() == Path(os.environ[netguard.ENV])
    assert os.environ["PYTHONPATH"].split(os.pathsep)[0] == str(TESTS / "sealed")  # subprocesses get it too


def test_a_connection_to_another_machine_is_refused_before_the_syscall_and_logged(tmp_path):
    with netguard.logging_to(tmp_path / "net.log") as log:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            with pytest.raises(netguard.NetworkAccessError, match=rf"connect \('{TEST_NET}', 80\)"):
                s.connect((TEST_NET, 80))
            with pytest.raises(netguard.NetworkAccessError, match=rf"connect_ex \('{TEST_NET}', 443\)"):
                s.connect_ex((TEST_NET, 443))
            with pytest.raises(OSError, match="not connected"):  # the connect never reached the kernel
                s.getpeername()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            with pytest.raises(netguard.NetworkAccessError, match=rf"sendto \('{TEST_NET}', 53\)"):
                u.sendto(b"x", (TEST_NET, 53))
            with pytest.raises(netguard.NetworkAccessError, match=rf"sendto \('{TEST_NET}', 53\)"):
                u.sendto(b"x", 0, (TEST_NET, 53))
        try:  # a kernel without IPv6 cannot even make the socket: then there is nothing to guard
            s6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        except OSError:
            s6 = None
        if s6 is not None:
            with s6, pytest.raises(netguard.NetworkAccessError, match=r"connect \('2001:db8::1', 80, 0, 0\)"):
                s6.connect(("2001:db8::1", 80, 0, 0))  # 2001:db8::/32: the documentation range
        # a host name: refused at the lookup, before any DNS query leaves the machine
        with pytest.raises(netguard.NetworkAccessError, match=r"getaddrinfo 'download\.pytorch\.org'"):
            socket.create_connection(("download.pytorch.org", 443), timeout=1)
        with pytest.raises(netguard.NetworkAccessError, match=r"gethostbyname 'example\.com'"):
            socket.gethostbyname("example.com")
    lines = _lines(log)
    assert len(lines) == (7 if s6 is not None else 6) and all(line.startswith(f"pid {os.getpid()}: ") for line in lines)
    assert "test_hermetic.py" in lines[0]  # the caller is named
    assert netguard.log_path() != log  # the session's log is back, and holds none of these


def test_loopback_and_unix_sockets_are_allowed(tmp_path):
    """torchrun/gloo and local servers talk over loopback TCP; multiprocessing over AF_UNIX."""
    with netguard.logging_to(tmp_path / "net.log") as log:
        with socket.create_server(("127.0.0.1", 0)) as server:
            port = server.getsockname()[1]
            for host in ("127.0.0.1", "localhost"):
                with socket.create_connection((host, port), timeout=5) as client:
                    peer, _ = server.accept()
                    with peer:
                        client.sendall(b"ping")
                        assert peer.recv(4) == b"ping"
        a, b = socket.socketpair(socket.AF_UNIX)
        with a, b:
            a.sendall(b"pong")
            assert b.recv(4) == b"pong"
        assert socket.getaddrinfo("localhost", 80)
        assert socket.getaddrinfo(TEST_NET, 80)[0][4] == (TEST_NET, 80)  # numeric: no query is sent
    assert _lines(log) == []


def test_subprocesses_inherit_the_switch_and_the_guard(tmp_path):
    log = tmp_path / "child.log"
    code = textwrap.dedent(f"""
        import os, socket
        print(os.environ["CLIPCOMPARE_OFFLINE"])
        socket.create_connection(("{TEST_NET}", 9), timeout=1)
    """)
    res = subprocess.run([sys.executable, "-c", code], env=_env(**{netguard.ENV: str(log)}),
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and res.stdout == "1\n"
    assert f"NetworkAccessError: the test suite is offline: pid {res.stderr.split('pid ')[1].split(':')[0]}" in res.stderr
    (line,) = _lines(log)
    assert line.startswith("pid ") and f"connect ('{TEST_NET}', 9)" in line and f"pid {os.getpid()}:" not in line


def _fake_release(monkeypatch, cfg: dict) -> None:
    """open_clip believes tiny-RN-quickgelu has a released tag whose weights come from ``cfg``'s source."""
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda arch, tag: {"quick_gelu": True, **cfg})
    monkeypatch.setattr(open_clip, "list_pretrained_tags_by_model", lambda arch: ["released"])


@pytest.mark.parametrize("source", [
    "torchvision",
    {"url": "https://openaipublic.azureedge.net/clip/models/0123/tiny.pt"},
    {"hf_hub": "timm/tiny-clip/", "url": ""},
])
def test_loaders_fall_back_to_random_weights_without_touching_the_network(source, tmp_path, monkeypatch):
    """Weights in no cache: with the switch on, no loader even looks the download host up (on a networked
    machine it would otherwise fetch them, and every "random resnet18" test would run pretrained weights)."""
    with netguard.logging_to(tmp_path / "net.log") as log:
        if source == "torchvision":
            loaded = load_model(parse_spec("resnet18"), allow_random=True)
            assert loaded.missing_weights == "resnet18-f37072fd.pth"
        else:
            _fake_release(monkeypatch, source)
            loaded = load_model(parse_spec("clip:tiny-RN-quickgelu@released"), allow_random=True)
        assert not loaded.pretrained
    assert _lines(log) == []


@pytest.mark.slow  # a subprocess that imports torch and builds a model
def test_the_cli_in_a_subprocess_downloads_nothing(tmp_path):
    log = tmp_path / "child.log"
    image = make_image(tmp_path / "x.jpg")
    res = subprocess.run([sys.executable, "-m", "clipcompare", "classify", str(image), "-m", "resnet18",
                          "--allow-random", "--labels", "bald eagle,axolotl"],
                         env=_env(**{netguard.ENV: str(log)}), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "random" in res.stdout + res.stderr and _lines(log) == []


def test_a_swallowed_attempt_still_fails_the_run(tmp_path):
    """Code that catches everything (as "offline, fall back" handlers do) cannot hide an attempt: the test
    during which it happened errors, and so does the run."""
    (tmp_path / "test_swallow.py").write_text(textwrap.dedent(f"""
        import socket

        def test_swallows():
            try:
                socket.create_connection(("{TEST_NET}", 80), timeout=1)
            except Exception:
                pass

        def test_clean():
            pass
    """))
    # tests/conftest.py as a plugin: the same setup as this suite's, in a fresh session
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "conftest",
                          "--rootdir", str(tmp_path), str(tmp_path / "test_swallow.py")],
                         env=_env(PYTHONPATH=os.pathsep.join([str(TESTS), str(SRC)])), cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == pytest.ExitCode.TESTS_FAILED, res.stdout + res.stderr
    assert "2 passed, 1 error" in res.stdout
    assert "ERROR test_swallow.py::test_swallows - Failed: the test suite is offline" in res.stdout
    assert "network access attempted (the suite is offline)" in res.stdout
    assert f"connect ('{TEST_NET}', 80) from {tmp_path / 'test_swallow.py'}:6 in test_swallows" in res.stdout
