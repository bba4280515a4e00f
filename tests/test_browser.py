"""The runs-table link a sweep prints opens MLflow's runs table with the sweep's children.

Headless Chromium driven by playwright-core (npm) against ``mlflow ui`` on a
loopback port. Needs Debian's ``chromium`` (``apt-get install -y chromium``)
and ``npm i playwright-core`` in a folder named by ``$FSJAX_PLAYWRIGHT_DIR``
(its ``node_modules``) or in ``.cache/browser`` of this repository; skips
with the reason otherwise. ``$FSJAX_SCREENSHOT`` keeps the screenshot.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("FSJAX_CHROMIUM", "/usr/bin/chromium")
QUICK = "experiments/quick.yaml"

SCRIPT = r"""
const { chromium } = require('playwright-core');
const [url, parent, children, shot, profile] = process.argv.slice(2);
(async () => {
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.FSJAX_CHROMIUM, headless: true,
    viewport: {width: 1500, height: 800},
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
           '--disable-background-networking', '--disable-component-update', '--disable-sync']});
  const page = ctx.pages()[0] || await ctx.newPage();
  try {
    await page.goto(url, {waitUntil: 'domcontentloaded', timeout: 120000});
    const cell = page.locator('[id^="cell-attributes.`Run Name`"]', {hasText: parent}).first();
    await cell.waitFor({timeout: 180000});
    // A parent run is one row with an expander; its children are nested under it.
    await cell.locator('button').first().click();
    for (const name of JSON.parse(children)) {
      await page.getByText(name, {exact: true}).first().waitFor({timeout: 60000});
    }
    await page.screenshot({path: shot});
    console.log('OK ' + (await page.evaluate(() => document.body.innerText)).split('\n')
                .filter(l => l.includes('seed=')).join(' | '));
  } catch (err) {
    await page.screenshot({path: shot}).catch(() => {});
    throw err;
  } finally {
    await ctx.close();
  }
})().catch(e => { console.error(String(e).slice(0, 2000)); process.exit(1); });
"""


def _node_modules() -> Path | None:
    for d in (os.environ.get("FSJAX_PLAYWRIGHT_DIR"), ROOT / ".cache" / "browser"):
        if d and (Path(d) / "node_modules" / "playwright-core").is_dir():
            return Path(d) / "node_modules"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.processes
def test_printed_link_opens_the_runs_table_with_the_sweeps_children(tmp_path):
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    if shutil.which("node") is None:
        pytest.skip("no node (Node.js) for playwright-core")
    modules = _node_modules()
    if modules is None:
        pytest.skip("playwright-core not found: npm i playwright-core in .cache/browser "
                    "or in $FSJAX_PLAYWRIGHT_DIR")
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    sweep = subprocess.run(
        [sys.executable, "-m", "fsjax", "sweep", QUICK, "--grid",
         "selection.name=random,fair_select", "--seeds", "0-1", "--set", "rounds=1",
         "--out", str(tmp_path / "sweep"), "--tracking-uri", uri, "--workers", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
    (link,) = re.findall(r"http://127\.0\.0\.1:5000/#/experiments/\S+", sweep.stdout)
    assert link.endswith("/runs?workflowType=machine_learning")

    port = _free_port()
    ui = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
                           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True,
                          env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert ui.poll() is None and time.monotonic() < deadline, "mlflow ui did not start"
                time.sleep(1)
        (tmp_path / "check.js").write_text(SCRIPT)
        children = [f"selection={s} seed={n}" for s in ("random", "fair_select") for n in (0, 1)]
        shot = Path(os.environ.get("FSJAX_SCREENSHOT", tmp_path / "runs_table.png"))
        page = subprocess.run(
            ["node", str(tmp_path / "check.js"), link.replace(":5000", f":{port}"),
             "selection=random,fair_select seeds=0-1 | sweep quick", json.dumps(children),
             str(shot), str(tmp_path / "profile")],
            env={**os.environ, "NODE_PATH": str(modules), "FSJAX_CHROMIUM": CHROMIUM},
            capture_output=True, text=True, timeout=420)
        assert page.returncode == 0, page.stdout[-2000:] + page.stderr[-2000:]
        assert all(name in page.stdout for name in children)
        assert shot.stat().st_size > 10000
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(30)
