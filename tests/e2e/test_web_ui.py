"""A rollout in the real Temporal Web UI, seen by a real browser: headless Chromium driven over the DevTools
protocol, because the Web UI is a JavaScript application that renders after the page has loaded.

The rollout starts from an OS resource (the CR bridge), is held with the ``pause`` signal, and is opened through
the link the bridge writes to the resource's status. The Web UI must show the bridge's static summary and, on the
"User Metadata" tab, the rollout's current details: the progress table that ``workflow.set_current_details``
keeps, one row per node.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest

from models.os_resource import GROUP, PLURAL, VERSION
from models.rollout import Phase, RolloutStatus
from tests.e2e.cluster import E2ECluster

pytestmark = pytest.mark.slow

RENDER_LIMIT = 60.0  # seconds for the Web UI to load and render on a busy machine
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # we run as root in CI
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1100",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",  # Chromium picks a free port and writes it to DevToolsActivePort
]
#: The tables of the page's same-origin iframes (the Web UI renders markdown details in one), as rows of cells.
IFRAME_TABLES = """JSON.stringify(Array.from(document.querySelectorAll('iframe')).flatMap(f =>
    f.contentDocument ? Array.from(f.contentDocument.querySelectorAll('table')).map(t =>
        Array.from(t.rows).map(r => Array.from(r.cells).map(c => c.innerText.trim()))) : []))"""
IFRAME_TEXT = """Array.from(document.querySelectorAll('iframe'))
    .map(f => f.contentDocument && f.contentDocument.body ? f.contentDocument.body.innerText : '').join('\\n')"""
CLICK_TAB = """(() => { const tabs = Array.from(document.querySelectorAll('a[role=tab]'))
    .filter(t => t.innerText.trim() === %s); tabs.forEach(t => t.click()); return tabs.length; })()"""


class Page:
    """One browser tab, over the DevTools protocol's websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._ids += 1
        await self._ws.send_json({"id": self._ids, "method": method, "params": params})
        while True:  # events (no id) arrive in between; only our answer matters
            message = await asyncio.wait_for(self._ws.receive_json(), RENDER_LIMIT)
            if message.get("id") == self._ids:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result

    async def evaluate(self, expression: str) -> Any:
        answer = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return answer.get("result", {}).get("value")

    async def text(self) -> str:
        return str(await self.evaluate("document.body ? document.body.innerText : ''") or "")

    async def wait_for(self, what: str, expression: str, predicate: Any) -> Any:
        """Evaluate ``expression`` until ``predicate(value)`` holds (bounded): the page renders asynchronously."""
        deadline = asyncio.get_running_loop().time() + RENDER_LIMIT
        while True:
            value = await self.evaluate(expression)
            if predicate(value):
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"the Web UI never showed {what}; last: {str(value)[:2000]}")
            await asyncio.sleep(0.5)

    async def screenshot(self, path: Path) -> Path:
        shot = await self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))
        return path


@contextlib.asynccontextmanager
async def chromium_page(profile: Path) -> AsyncIterator[Page]:
    """Headless Chromium (Debian's package, which the Makefile installs) with one blank tab."""
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("chromium is not installed (make deps installs it with apt-get)")
    process = subprocess.Popen(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its renderer and GPU processes go with it
    )
    try:
        port_file = profile / "DevToolsActivePort"
        for _ in range(int(RENDER_LIMIT / 0.1)):
            if port_file.exists() and len(port_file.read_text().split()) >= 2:
                break
            assert process.poll() is None, f"chromium exited with {process.returncode}"
            await asyncio.sleep(0.1)
        port = port_file.read_text().split()[0]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                targets = await response.json()
            url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
            async with session.ws_connect(url, max_msg_size=0) as ws:
                page = Page(ws)
                await page.call("Page.enable")
                yield page
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


async def test_the_web_ui_shows_a_held_rollouts_summary_and_progress_table(e2e: E2ECluster, tmp_path: Path) -> None:
    names = sorted(h.name for h in e2e.stack.hosts)[:2]
    tag = await e2e.select(names)
    image = await e2e.new_image()
    name = f"ui-{tag}"
    resource = e2e.os_resource(name, image, tag, maxunavailable=1)
    await e2e.call(e2e.custom.create_namespaced_custom_object, GROUP, VERSION, "default", PLURAL, resource)

    async def os_status() -> dict[str, Any]:
        obj = await e2e.call(e2e.custom.get_namespaced_custom_object, GROUP, VERSION, "default", PLURAL, name)
        return dict(cast(dict[str, Any], obj).get("status") or {})

    status = await e2e.wait_for(os_status, lambda s: s.get("phase") not in (None, "Pending"), "the rollout starts")
    handle = e2e.client.get_workflow_handle(status["workflowId"], result_type=RolloutStatus)
    await handle.signal("pause", "held for the Web UI test")
    await e2e.wait_status(handle, lambda s: s.phase == Phase.PAUSED and not s.in_flight, "the rollout is held")
    status = await e2e.wait_for(os_status, lambda s: s.get("phase") == "Paused", "the bridge reports Paused")
    link = status["webUI"]
    assert link.startswith(e2e.stack.web_ui + "/namespaces/default/workflows/")

    try:
        async with chromium_page(tmp_path / "chromium") as page:
            await page.call("Page.navigate", url=link)  # the link without a run id: the Web UI opens the latest
            body = await page.wait_for(
                "the workflow page with the bridge's summary",
                "document.body ? document.body.innerText : ''",
                lambda text: bool(text) and handle.id in text and "User Metadata" in text,
            )
            assert "ClusterRollout" in body and "RUNNING" in body.upper()
            assert await page.evaluate(CLICK_TAB % json.dumps("User Metadata")) == 1
            tables = await page.wait_for(
                "the current details table",
                IFRAME_TABLES,
                lambda value: bool(value) and all(n in value for n in names),
            )
            metadata = await page.text()
            details = await page.evaluate(IFRAME_TEXT)
            shot = await page.screenshot(tmp_path / "web-ui-progress.png")
    finally:
        # Deleting the resource supersedes the held rollout, which then ends: the shared stack is left idle.
        await e2e.call(e2e.custom.delete_namespaced_custom_object, GROUP, VERSION, "default", PLURAL, name)
        ended = await e2e.result(handle)
    assert ended.phase == Phase.SUPERSEDED

    (table,) = json.loads(tables)
    assert table[0] == ["node", "state", "from", "detail"]
    rows = {row[0]: row[1:] for row in table[1:]}
    assert set(rows) == set(names)
    assert all(state in ("Succeeded", "Pending") for state, _, _ in rows.values()), rows
    assert any(state == "Pending" for state, _, _ in rows.values()), rows  # held before the last node
    assert f"upgrade to {image.version}: Paused" in details and "held for the Web UI test" in details
    # The static summary the bridge set when it started the rollout (markdown too, so in a frame of its own).
    assert f"from disk {image.url}, 1 at a time" in details
    assert handle.id in metadata
    assert shot.stat().st_size > 10_000
    print(f"screenshot of the Web UI: {shot}")
