"""Headless Chromium driven through the DevTools protocol over a pipe (``--remote-debugging-pipe``: NUL-separated
JSON on file descriptors 3 and 4), with the standard library only — no websocket client, no browser-automation
package. Enough to open the viewer page offline, call its test hook and take screenshots."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time

from ..errors import Avat3rError

BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
# software WebGL2 (SwiftShader through ANGLE): the same pixels on any machine, no GPU needed
GL_FLAGS = ("--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--disable-gpu")


class ChromiumError(Avat3rError, RuntimeError):
    """Chromium is missing, did not start, or a page command failed."""


def find_chromium() -> str | None:
    """``$AVAT3R_CHROMIUM``, else the first Chromium or Chrome on PATH."""
    env = os.environ.get("AVAT3R_CHROMIUM")
    if env:
        return env if os.path.isfile(env) else shutil.which(env)
    for name in BINARIES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _above_9(fd: int) -> int:
    """The descriptor moved to 10 or above, so moving it onto 3 or 4 in the child cannot clobber the other."""
    import fcntl

    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


class Chromium:
    """One headless browser. ``offline`` points every proxied request at a closed port and turns on the
    protocol's offline emulation, so a page that needed the network would show it; ``requests`` records every
    URL the page asked for."""

    def __init__(self, binary: str | None = None, width: int = 1024, height: int = 768, offline: bool = True,
                 timeout: float = 60.0):
        binary = binary or find_chromium()
        if binary is None:
            raise ChromiumError("no chromium binary found (apt-get install chromium, or set AVAT3R_CHROMIUM)")
        self.timeout, self.offline, self.width, self.height = timeout, offline, width, height
        self.profile = tempfile.mkdtemp(prefix="avat3r-chromium-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        to_chrome_r, from_chrome_w = _above_9(to_chrome_r), _above_9(from_chrome_w)
        args = ["--headless=new", "--remote-debugging-pipe", f"--user-data-dir={self.profile}", *GL_FLAGS,
                "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--mute-audio",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--hide-scrollbars", "--force-device-scale-factor=1", f"--window-size={width},{height}"]
        if offline:
            args += ["--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.append("--no-sandbox")  # Chromium refuses to run its sandbox as root
        # the protocol pipe must sit on descriptors 3 (commands in) and 4 (replies out) of the browser; bash moves
        # them there (POSIX sh need not take descriptors above 9 in a redirection)
        shell = f'exec "$0" "$@" 3<&{to_chrome_r} 4>&{from_chrome_w} {to_chrome_r}<&- {from_chrome_w}>&-'
        bash = shutil.which("bash")
        if bash is None:
            raise ChromiumError("driving chromium needs bash (to hand it the DevTools pipe)")
        self.proc = subprocess.Popen([bash, "-c", shell, binary, *args, "about:blank"],
                                     pass_fds=(to_chrome_r, from_chrome_w), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._next_id = 0
        self._replies: dict[int, queue.Queue] = {}
        self._lock = threading.Lock()
        self.events: list[dict] = []
        self.session: str | None = None
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()

    # -- protocol ----------------------------------------------------------------------------------
    def _read_loop(self) -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(self._from_chrome, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._lock:
                    for q in self._replies.values():
                        q.put({"error": {"message": "chromium exited"}})
                return
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg:
                    with self._lock:
                        q = self._replies.get(msg["id"])
                    if q is not None:
                        q.put(msg)
                else:
                    self.events.append(msg)

    def send(self, method: str, params: dict | None = None, session: bool = True) -> dict:
        with self._lock:
            self._next_id += 1
            mid = self._next_id
            self._replies[mid] = q = queue.Queue()
        msg = {"id": mid, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        try:
            os.write(self._to_chrome, json.dumps(msg).encode() + b"\0")
        except OSError:
            raise ChromiumError(f"chromium is not running (it exited with {self.proc.poll()})") from None
        try:
            reply = q.get(timeout=self.timeout)
        except queue.Empty:
            raise ChromiumError(f"chromium did not answer {method} within {self.timeout:g} s") from None
        finally:
            with self._lock:
                self._replies.pop(mid, None)
        if "error" in reply:
            raise ChromiumError(f"{method}: {reply['error'].get('message')}")
        return reply.get("result", {})

    # -- pages -------------------------------------------------------------------------------------
    def open(self, url: str, ready: str = "window.avat3r && window.avat3r.ready === true") -> None:
        """Open ``url`` in a fresh tab of the window's size and wait until ``ready`` evaluates true."""
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 session=False)["sessionId"]
        for method in ("Page.enable", "Runtime.enable", "Network.enable"):
            self.send(method)
        if self.offline:
            self.send("Network.emulateNetworkConditions", {"offline": True, "latency": 0,
                                                           "downloadThroughput": -1, "uploadThroughput": -1})
        self.send("Emulation.setDeviceMetricsOverride", {"width": self.width, "height": self.height,
                                                         "deviceScaleFactor": 1, "mobile": False})
        self.send("Page.navigate", {"url": url})
        deadline = time.monotonic() + self.timeout
        while not self.evaluate(f"Boolean({ready})"):
            errors = self.exceptions()
            if errors:
                raise ChromiumError(f"the page threw: {errors[0]}")
            if time.monotonic() > deadline:
                raise ChromiumError(f"{url} did not become ready within {self.timeout:g} s")
            time.sleep(0.1)

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        res = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                             "awaitPromise": True})
        if "exceptionDetails" in res:
            d = res["exceptionDetails"]
            raise ChromiumError(f"page script failed: {d.get('exception', {}).get('description') or d.get('text')}")
        return res.get("result", {}).get("value")

    def screenshot(self, x: int = 0, y: int = 0, width: int | None = None, height: int | None = None) -> bytes:
        """PNG bytes of a region of the page (CSS pixels, device scale 1)."""
        import base64

        clip = {"x": x, "y": y, "width": width or self.width, "height": height or self.height, "scale": 1}
        res = self.send("Page.captureScreenshot", {"format": "png", "clip": clip, "captureBeyondViewport": False})
        return base64.b64decode(res["data"])

    def exceptions(self) -> list[str]:
        return [e["params"]["exceptionDetails"].get("exception", {}).get("description")
                or e["params"]["exceptionDetails"].get("text", "")
                for e in list(self.events) if e.get("method") == "Runtime.exceptionThrown"]

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in list(self.events)
                if e.get("method") == "Network.requestWillBeSent"]

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                try:
                    self.send("Browser.close", session=False)
                except ChromiumError:
                    pass
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            for fd in (self._to_chrome, self._from_chrome):
                try:
                    os.close(fd)
                except OSError:
                    pass
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
