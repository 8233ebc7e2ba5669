"""The MLflow UI as a researcher sees it, checked in a real browser (Debian's headless Chromium + ChromeDriver).

A two-variant smoke study fills a store; `harness ui` serves it on 127.0.0.1. In Chromium, the experiment's plain
runs page shows the study's parent run with its whole name, and expanding it shows every trial's child run by its
readable name; the URL `harness ui` prints for the study shows, without a click, every trial ranked by the study's
table metric, whose column is shown with the values logged; a trial opened from there has its metric charts drawn
and its sample grid shown as an image of the logged PNG's size. Screenshots of each page go to the test's temp dir.

Skipped when Chromium, ChromeDriver or selenium are missing, unless HARNESS_REQUIRE_BROWSER=1 (set by .ci/run,
which installs them), so CI cannot pass without running it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
VARIANTS = ["D8", "D2S4I"]


def _browser_or_skip() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package")
    if missing:
        msg = f"browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("HARNESS_REQUIRE_BROWSER") == "1":
            pytest.fail(msg)
        pytest.skip(msg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "RAY_ADDRESS"))}


@pytest.fixture
def ui_server(tmp_path):
    """A finished smoke study's store served by `harness ui`; yields (results dir, base URL, the printed lines)."""
    _browser_or_skip()
    results = tmp_path / "results"
    run = subprocess.run([sys.executable, "-m", "harness.cli", "study", str(REPO / "studies" / "block_sharing.yaml"),
                          "--profile", "smoke", "--results-dir", str(results),
                          "--set", f"variants=[{','.join(VARIANTS)}]"],
                         capture_output=True, text=True, timeout=600, env=_env(), cwd=REPO)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    port = _free_port()
    out, err = tmp_path / "ui.out", tmp_path / "ui.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "ui", "--results-dir", str(results), "--port",
                                 str(port)], stdout=stdout, stderr=stderr, env=_env(), cwd=REPO,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while not any(line.startswith("  block_sharing: ") for line in out.read_text().splitlines()):
            assert proc.poll() is None and time.time() < deadline, out.read_text() + err.read_text()[-2000:]
            time.sleep(0.5)
        # printed once the server answers: the starting line, the UI's address, then the study's runs page
        yield results, base, out.read_text().splitlines()
    finally:
        proc.send_signal(signal.SIGTERM)  # the harness process alone: it ends the server's processes with it
        proc.wait(timeout=60)


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    # no sandbox as root; the background-networking flags keep Chromium off the closed network
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1600,1000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_mlflow_ui_shows_the_child_runs_a_metric_chart_and_a_sample_grid(ui_server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    results, base, lines = ui_server
    assert lines[0].startswith("starting the MLflow UI for ") and lines[1].endswith(f"at {base}"), lines
    assert lines[2].startswith("  block_sharing: "), lines
    study_url = lines[2].split(": ", 1)[1]
    assert study_url.startswith(f"{base}/#/experiments/") and "&viewStateShareKey=harness-" in study_url

    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    exp = client.get_experiment_by_name("block_sharing")
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
    trials = client.search_runs([exp.experiment_id], filter_string="tags.`harness.kind` = 'trial'")
    names = sorted(r.info.run_name for r in trials)
    assert names == sorted(f"{v} synthetic seed=0" for v in VARIANTS)
    [parent] = client.search_runs([exp.experiment_id], filter_string="tags.`harness.kind` = 'study'")
    wait = WebDriverWait(browser, 60)

    # The experiment's plain runs table: one parent row, its name whole (the column cuts names with an ellipsis);
    # its expander shows the child runs by name.
    browser.get(study_url.split("&viewStateShareKey=")[0])
    link = wait.until(EC.visibility_of_element_located((By.LINK_TEXT, parent.info.run_name)))
    assert parent.info.run_name.startswith("smoke ")
    shown = browser.execute_script("const s = arguments[0].querySelector('span') || arguments[0]; "
                                   "return [s.scrollWidth, s.clientWidth];", link)
    assert shown[0] <= shown[1], f"parent run name {parent.info.run_name!r} cut: {shown}"
    expander = link.find_element(By.XPATH, "./ancestor::*[@role='gridcell'][1]//button")
    expander.click()
    for name in names:
        wait.until(EC.presence_of_element_located((By.LINK_TEXT, name)))
    browser.save_screenshot(str(tmp_path / "runs.png"))

    # The study's page as `harness ui` prints it: no click, every trial shown, ranked by the study's table metric
    # (fid, in the smoke profile's classifier features), whose column shows the values logged.
    browser.get(study_url)
    key = "fd_classifier"
    header = wait.until(EC.visibility_of_element_located(
        (By.CSS_SELECTOR, f"[role='columnheader'][col-id='metrics.`{key}`']")))
    assert header.text == key
    for name in names:
        wait.until(EC.visibility_of_element_located((By.LINK_TEXT, name)))

    def cells(d):  # row index -> (run name, metric value shown), once both are drawn for every trial
        rows = {}
        for row in d.find_elements(By.CSS_SELECTOR, "[role='row'][row-index]"):
            for cell in row.find_elements(By.CSS_SELECTOR, "[role='gridcell'][col-id]"):
                entry = rows.setdefault(int(row.get_attribute("row-index")), [None, None])
                if cell.get_attribute("col-id") == "attributes.`Run Name`":
                    entry[0] = next((n for n in names if n in cell.text), None)
                elif cell.get_attribute("col-id") == f"metrics.`{key}`":
                    entry[1] = cell.text
        done = len(rows) == len(names) and all(a and b for a, b in rows.values())
        return rows if done else False

    rows = wait.until(cells)
    logged = {r.info.run_name: r.data.metrics[key] for r in trials}
    ranked = sorted(logged, key=logged.get)  # lower is better
    assert [rows[i][0] for i in sorted(rows)] == ranked, rows
    for name, value in rows.values():
        assert float(value) == pytest.approx(logged[name], rel=1e-6), (name, value)
    browser.save_screenshot(str(tmp_path / "key_metrics.png"))

    # A child run's page: its metric charts are drawn (plotly SVGs), the training loss among them.
    run = next(r for r in trials if r.data.tags["harness.variant"] == "D8")
    browser.find_element(By.LINK_TEXT, run.info.run_name).click()
    wait.until(EC.url_contains(run.info.run_id))
    wait.until(EC.element_to_be_clickable((By.XPATH, "//*[text()='Model metrics']"))).click()
    search = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "input[placeholder*='Search metric']")))
    search.send_keys("loss")  # the training-loss chart, brought into view as a person would
    title = wait.until(EC.visibility_of_element_located((By.XPATH, "//*[text()='loss']")))

    def drawn_line(_d):  # the chart card around the title holds a plotly trace path with points
        cards = title.find_elements(By.XPATH, "./ancestor::*[.//*[name()='path' and contains(@class, 'js-line')]][1]")
        return any(len(p.get_attribute("d") or "") > 20 for c in cards
                   for p in c.find_elements(By.CSS_SELECTOR, "path.js-line"))

    wait.until(drawn_line)
    browser.save_screenshot(str(tmp_path / "metrics.png"))

    # Its artifacts: the sample grid of the last evaluation, shown as an image of the logged file's size.
    grids = sorted(a.path for a in client.list_artifacts(run.info.run_id, "samples") if a.path.endswith(".png"))
    assert grids, "no sample grid logged"
    local = Path(client.download_artifacts(run.info.run_id, grids[-1], str(tmp_path)))
    width = Image.open(local).size[0]
    wait.until(EC.element_to_be_clickable((By.XPATH, "//*[text()='Artifacts']"))).click()
    wait.until(EC.element_to_be_clickable((By.XPATH, "//*[text()='samples']"))).click()
    wait.until(EC.element_to_be_clickable((By.XPATH, f"//*[text()='{Path(grids[-1]).name}']"))).click()

    def grid_image(d):
        for img in d.find_elements(By.TAG_NAME, "img"):
            if (img.get_attribute("src") or "").startswith("blob:") and \
                    d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) == width:
                return img
        return False

    assert wait.until(grid_image)
    assert re.search(re.escape(grids[-1]), browser.find_element(By.TAG_NAME, "body").text)
    browser.save_screenshot(str(tmp_path / "sample_grid.png"))
    for shot in ("runs.png", "key_metrics.png", "metrics.png", "sample_grid.png"):
        assert (tmp_path / shot).stat().st_size > 10_000
