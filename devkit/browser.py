"""Headless Chromium driven over the DevTools protocol, for page tests that interact.

The protocol runs over `--remote-debugging-pipe` (fd 3: commands in, fd 4: answers
out, NUL-separated JSON), so no WebSocket client and no debugging port are needed.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

CHROMIUM = "chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
PIPE_FLAG = "--remote-debugging-pipe"
DUMP_TIMEOUT_S = 120
ANSWER_TIMEOUT_S = 60.0
POLL_S = 0.1
READ_BYTES = 2**16
# Pipe ends handed to the child sit above the fds (3, 4) they are moved onto.
CHILD_FD_FLOOR = 10


class BrowserError(Exception):
    pass


def available() -> bool:
    return shutil.which(CHROMIUM) is not None


def dump_dom(url: str, profile: Path, virtual_time_ms: int = 3000) -> str:
    """The page's DOM after its scripts ran (no interaction needed: no protocol)."""
    argv = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}"]
    argv += [f"--virtual-time-budget={virtual_time_ms}", "--dump-dom", url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=DUMP_TIMEOUT_S, check=True)
    return done.stdout


def _pipe() -> tuple[int, int]:
    """os.pipe(), both ends moved to fds >= CHILD_FD_FLOOR (close-on-exec)."""
    ends = []
    for fd in os.pipe():
        ends.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, CHILD_FD_FLOOR))
        os.close(fd)
    return ends[0], ends[1]


class Chromium:
    """One headless browser with one page; `call` sends a command to that page."""

    def __init__(self, profile: Path) -> None:
        # Chromium wants the pipes as its fds 3 and 4. The shell moves them there; the
        # ends it moves are first raised to fds >= 10, so that neither is itself 3 or 4
        # (then `3<&5 4>&3` would wire the wrong pipe, and closing the source afterwards
        # could close the very fd just set up: "chromium closed the pipe").
        commands_read, self.commands = _pipe()
        self.answers, answers_write = _pipe()
        script = (
            f'exec "$0" "$@" 3<&{commands_read} 4>&{answers_write} '
            f"{commands_read}<&- {answers_write}>&-"
        )
        try:
            self.process = subprocess.Popen(
                ["bash", "-c", script, CHROMIUM, *FLAGS, PIPE_FLAG, f"--user-data-dir={profile}"],
                pass_fds=(commands_read, answers_write),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except OSError:
            os.close(self.commands)
            os.close(self.answers)
            raise
        finally:
            os.close(commands_read)
            os.close(answers_write)
        self.buffer = b""
        self.next_id = 0
        self.session: str | None = None

    def _send(self, method: str, params: dict[str, Any], session: str | None) -> int:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self.commands, json.dumps(message).encode() + b"\0")
        return self.next_id

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            ready, _, _ = select.select([self.answers], [], [], max(0.0, deadline - time.time()))
            if not ready:
                raise BrowserError("no answer from chromium in time")
            chunk = os.read(self.answers, READ_BYTES)
            if not chunk:
                raise BrowserError("chromium closed the pipe")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, page: bool = True, **params: Any) -> dict[str, Any]:
        """Send a command and wait for its answer (events in between are dropped)."""
        wanted = self._send(method, params, self.session if page else None)
        deadline = time.time() + ANSWER_TIMEOUT_S
        while True:
            message = self._read_message(deadline)
            if message.get("id") == wanted:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return message.get("result", {})

    def open(self, url: str) -> None:
        target = self.call("Target.createTarget", page=False, url="about:blank")["targetId"]
        attached = self.call("Target.attachToTarget", page=False, targetId=target, flatten=True)
        self.session = attached["sessionId"]
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = ANSWER_TIMEOUT_S) -> Any:
        """Poll until `expression` is truthy (a page still loading may throw: poll on);
        returns its value."""
        deadline = time.time() + timeout_s
        last = "false"
        while time.time() < deadline:
            try:
                value = self.evaluate(expression)
            except BrowserError as exc:
                value, last = None, str(exc)
            if value:
                return value
            time.sleep(POLL_S)
        raise BrowserError(f"still {last} after {timeout_s} s: {expression}")

    def upload(self, selector: str, path: Path) -> None:
        """Choose `path` in a file input, as a user would (fires its change event)."""
        root = self.call("DOM.getDocument")["root"]["nodeId"]
        node = self.call("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.call("DOM.setFileInputFiles", nodeId=node, files=[str(path)])

    def screenshot(self, path: Path) -> Path:
        """The page as it is now, as a PNG at `path`."""
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def boxes(self, selectors: list[str]) -> dict[str, dict[str, float]]:
        """Each element's border box (getBoundingClientRect: x, y, width, height)."""
        return self.evaluate(
            f"Object.fromEntries({json.dumps(selectors)}.map(s => {{"
            "  const r = document.querySelector(s).getBoundingClientRect();"
            "  return [s, {x: r.x, y: r.y, width: r.width, height: r.height}]; }))"
        )

    def close(self) -> None:
        with contextlib.suppress(BrowserError, OSError):
            self.call("Browser.close", page=False)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self.commands)
        os.close(self.answers)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
