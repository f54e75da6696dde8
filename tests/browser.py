"""Open a page in headless Chromium over the DevTools protocol (--remote-debugging-pipe): screenshot,
console errors, uncaught exceptions and every request the page makes. Test helper; no extra packages."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


@dataclass
class PageVisit:
    screenshot: bytes
    requests: list[str] = field(default_factory=list)  # URLs other than data: and the page itself
    errors: list[str] = field(default_factory=list)  # console errors, uncaught exceptions, failed loads


class _Pipe:
    """CDP messages over fds 3 (to the browser) and 4 (from it), each JSON text ending in a NUL byte."""

    def __init__(self, write_fd: int, read_fd: int) -> None:
        self.write_fd, self.read_fd = write_fd, read_fd
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.write_fd, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self.read(timeout)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def read(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.read_fd], [], [], left)[0]:
                raise TimeoutError("no answer from Chromium")
            chunk = os.read(self.read_fd, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self.buffer += chunk
        raw, _, self.buffer = self.buffer.partition(b"\0")
        return json.loads(raw)

    def wait_for(self, method: str, timeout: float) -> None:
        if any(e.get("method") == method for e in self.events):
            return
        deadline = time.monotonic() + timeout
        while True:
            event = self.read(max(0.0, deadline - time.monotonic()))
            self.events.append(event)
            if event.get("method") == method:
                return


def visit(path: Path, width: int = 1280, height: int = 1600, chromium: str | None = None) -> PageVisit:
    """Load ``path`` offline (no DNS, a dead proxy) and report what the page did."""
    binary = chromium or find_chromium()
    if binary is None:
        raise FileNotFoundError("no Chromium")
    url = Path(path).resolve().as_uri()
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()
    with tempfile.TemporaryDirectory() as profile:
        args = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}", "--remote-debugging-pipe",
                # anything the page tries to fetch fails instead of leaving the machine
                "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9", "about:blank"]

        def child_fds() -> None:  # the browser reads commands on fd 3 and writes replies on fd 4;
            # close_fds=False keeps them: every other fd of ours is non-inheritable (PEP 446)
            # copies above 10 first, so placing one on 3 or 4 cannot overwrite the other
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_browser_r, from_browser_w)]
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                close_fds=False, preexec_fn=child_fds)
        os.close(to_browser_r)
        os.close(from_browser_w)
        pipe = _Pipe(to_browser_w, from_browser_r)
        try:
            target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Network", "Runtime", "Log", "Page"):
                pipe.send(f"{domain}.enable", session=session)
            pipe.send("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
            pipe.events.clear()
            pipe.send("Page.navigate", {"url": url}, session=session)
            pipe.wait_for("Page.loadEventFired", timeout=60)
            shot = base64.b64decode(pipe.send("Page.captureScreenshot", {"format": "png"}, session=session)["data"])
            pipe.send("Runtime.evaluate", {"expression": "1"}, session=session)  # drain events sent before it
            visit_ = PageVisit(shot)
            for e in pipe.events:
                method, params = e.get("method"), e.get("params", {})
                if method == "Network.requestWillBeSent":
                    u = params["request"]["url"]
                    if not u.startswith("data:") and u != url:
                        visit_.requests.append(u)
                elif method == "Network.loadingFailed":
                    visit_.errors.append(f"load failed: {params.get('errorText')}")
                elif method == "Runtime.exceptionThrown":
                    visit_.errors.append(json.dumps(params.get("exceptionDetails", {}))[:500])
                elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert", "warning"):
                    visit_.errors.append(f"console.{params['type']}: {params.get('args')}")
                elif method == "Log.entryAdded" and params.get("entry", {}).get("level") in ("error", "warning"):
                    visit_.errors.append(f"log: {params['entry'].get('text')}")
            try:
                pipe.send("Browser.close", timeout=10)
            except (RuntimeError, TimeoutError):
                pass
            return visit_
        finally:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            os.close(to_browser_w)
            os.close(from_browser_r)
