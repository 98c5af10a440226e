"""A tiny headless-Chromium driver over the DevTools protocol (the `websockets` package Prefect
already depends on): open a page, wait for text, click by text, screenshot. For docs/screenshots.

    with Browser(1500, 1000) as browser:
        browser.open("http://127.0.0.1:5000/#/experiments/1/runs/abc")
        browser.wait_for_text("Datasets")
        browser.click_text("Artifacts")
        browser.screenshot(Path("docs/x.png"))
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Self

import websockets


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Browser:
    def __init__(self, width: int = 1500, height: int = 1000):
        self.width, self.height = width, height
        self._ids = itertools.count(1)

    def __enter__(self) -> Self:
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium is None:
            raise SystemExit("needs chromium (Debian: apt-get install -y chromium)")
        self._profile = tempfile.TemporaryDirectory()
        port = _free_port()
        self._proc = subprocess.Popen(
            [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--remote-debugging-port={port}", f"--user-data-dir={self._profile.name}",
             f"--window-size={self.width},{self.height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as r:
                    pages = [t for t in json.load(r) if t["type"] == "page"]
                if pages:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("chromium did not start")
            time.sleep(0.2)
        self._loop = asyncio.new_event_loop()
        self._ws = self._loop.run_until_complete(
            websockets.connect(pages[0]["webSocketDebuggerUrl"], max_size=None))
        self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                  deviceScaleFactor=1, mobile=False)
        return self

    def __exit__(self, *exc) -> None:
        self._loop.run_until_complete(self._ws.close())
        self._loop.close()
        self._proc.terminate()
        self._proc.wait(timeout=10)
        self._profile.cleanup()

    def call(self, method: str, **params):
        """One DevTools command; returns its result (events in between are skipped)."""
        async def roundtrip():
            ident = next(self._ids)
            await self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))
            while True:
                message = json.loads(await self._ws.recv())
                if message.get("id") == ident:
                    if "error" in message:
                        raise RuntimeError(f"{method}: {message['error']}")
                    return message.get("result", {})

        return self._loop.run_until_complete(roundtrip())

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        return result.get("result", {}).get("value")

    def open(self, url: str) -> None:
        """Load `url` afresh (through about:blank: a single-page app keeps stale data when only
        the #fragment changes)."""
        self.call("Page.navigate", url="about:blank")
        self.call("Page.navigate", url=url)

    def wait_for_text(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.js(f"document.body && document.body.innerText.includes({text!r})"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {text!r} on the page after {timeout:.0f} s")
            time.sleep(0.3)

    def click_text(self, text: str, selector: str = "button, a, [role=tab], [role=button]",
                   exact: bool = True) -> bool:
        """Click the first element matching `selector` whose text is `text`; False if none."""
        test = "t === wanted" if exact else "t.includes(wanted)"
        return bool(self.js(f"""(() => {{
            const wanted = {text!r};
            const el = [...document.querySelectorAll({selector!r})]
                .find(e => {{ const t = (e.innerText || e.textContent || '').trim();
                             return {test}; }});
            if (el) {{ el.click(); return true; }}
            return false; }})()"""))

    def click(self, selector: str) -> bool:
        return bool(self.js(f"""(() => {{ const el = document.querySelector({selector!r});
            if (el) {{ el.click(); return true; }} return false; }})()"""))

    def screenshot(self, path: Path, settle: float = 1.5) -> None:
        time.sleep(settle)  # charts animate in
        data = self.call("Page.captureScreenshot", format="png")["data"]
        Path(path).write_bytes(base64.b64decode(data))
        print("wrote", path)
