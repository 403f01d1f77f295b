"""`hybridsim view` in a real headless browser (issue 18): Chromium (Debian's package) opens the page,
clicks the viewer's buttons through the DevTools protocol, and takes a screenshot. Skipped cleanly
where Chromium is not installed (`apt-get install chromium`).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.request

import pytest

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DevTools:
    """The smallest DevTools-protocol client: evaluate JavaScript, take screenshots."""

    def __init__(self, port: int, deadline: float):
        from websockets.sync.client import connect

        while True:
            try:
                pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json"))
                url = next(p["webSocketDebuggerUrl"] for p in pages if p.get("type") == "page")
                break
            except (OSError, StopIteration):
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        self.ws, self.n = connect(url, max_size=None), 0

    def call(self, method: str, **params) -> dict:
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.n:
                return msg.get("result", {})

    def js(self, expr: str):
        return self.call("Runtime.evaluate", expression=expr, returnByValue=True).get("result", {}).get("value")

    def wait(self, expr: str, timeout: float = 60.0):
        end = time.time() + timeout
        while time.time() < end:
            value = self.js(expr)
            if value:
                return value
            time.sleep(0.25)
        raise AssertionError(f"timed out waiting for {expr}")


CLICK = """(() => {{ const b = [...document.querySelectorAll('button')].find(e => e.textContent.trim() === {label!r});
  if (!b) return false; b.click(); return true; }})()"""


def test_viewer_in_headless_chromium(tmp_path):
    from hybridsim.interactive.viewer import Viewer, serve

    port, debug = _free_port(), _free_port()
    server, env = serve("franka_push", ["scenario.cameras.main.res=[64,64]", "scenario.cameras.top.res=[64,64]"],
                        port=port)
    viewer = Viewer(env, server, paused=True)
    loop = threading.Thread(target=viewer.run, daemon=True)
    loop.start()
    browser = subprocess.Popen([CHROMIUM, "--headless=new", "--no-sandbox", "--enable-unsafe-swiftshader",
                                f"--remote-debugging-port={debug}", f"--user-data-dir={tmp_path / 'profile'}",
                                "--window-size=1400,1000", f"http://127.0.0.1:{port}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        page = DevTools(debug, time.time() + 60)
        page.wait(CLICK.format(label="step").replace("b.click(); return true", "return true"), timeout=90)
        assert len(server.get_clients()) >= 1  # the page's websocket reached the server
        before = viewer.steps_done
        assert page.js(CLICK.format(label="step"))  # paused: one click, one step
        end = time.time() + 60
        while viewer.steps_done == before and time.time() < end:
            time.sleep(0.1)
        assert viewer.steps_done == before + 1
        box0 = env.session.frame.state.body_pos[0, env.session.sim.world.body_slot("box")].clone()
        assert page.js(CLICK.format(label="push"))  # the default push: up, 0.5 N*s on the box
        while viewer.steps_done == before + 1 and time.time() < end:
            time.sleep(0.1)
        time.sleep(0.5)
        box1 = env.session.frame.state.body_pos[0, env.session.sim.world.body_slot("box")]
        assert float(box1[2] - box0[2]) > 1e-3  # the push lifted it
        assert page.wait("document.body.innerText.includes('steps/s')")
        shot = page.call("Page.captureScreenshot", format="png")["data"]
        import base64

        png = base64.b64decode(shot)
        (tmp_path / "viewer.png").write_bytes(png)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    finally:
        browser.kill()
        browser.wait()
        viewer.stop.set()
        loop.join(timeout=60)
        server.stop()
        env.close()
