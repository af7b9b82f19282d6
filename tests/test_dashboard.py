"""The dashboard in a real headless Chromium (Debian's chromium and chromium-driver, driven by
Selenium) against a real cluster: every page loads without console errors, a running job's task
stream grows and ends matching the job's trace, and a killed agent disappears from the cluster page.
With LEPTON_SCREENSHOTS=DIR the test saves each page there (the README's pictures come from it)."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

import lepton
from waits import wait_for

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")
PAGES = ["cluster", "jobs", "stream", "movement", "devices"]
HEARTBEAT_TIMEOUT = 3.0  # the coordinator's default



@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="lepton-chromium-")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-quic", "--window-size=1400,900", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    with lepton.LocalCluster(agents=2, agent_args=["--test-delay", "0.04:0.08"]) as cluster:
        yield cluster


def data(browser, key: str) -> str | None:
    return browser.execute_script(f"return document.body.dataset.{key};")


def errors(browser) -> list[str]:
    return [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def screenshot(browser, name: str) -> None:
    folder = os.environ.get("LEPTON_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(Path(folder) / f"{name}.png"))


def test_every_page_loads_without_console_errors(browser, cluster):
    client = cluster.client(timeout=120)
    client.put("points", np.random.default_rng(1).standard_normal((40_000, 4)), partitions=8)
    client.sum(np.arange(200_000.0), partitions=16)
    running = client.submit("var", np.arange(4_000_000.0), partitions=160, label="a job to watch")
    url = cluster.dashboard_url
    for page in PAGES:
        browser.get(f"{url}#{page}")
        wait_for(lambda: data(browser, "agents") == "2", f"the {page} page's first update")
        if page == "stream":
            wait_for(lambda: int(data(browser, "kernelBars") or 0) > 0, "the running job's first kernel bars")
        time.sleep(1.2)  # one more update drawn, for the picture
        screenshot(browser, page)
        assert errors(browser) == [], page
        assert browser.find_element("css selector", f"section#{page}.active").is_displayed()
    assert np.isclose(running.result()["var"], np.arange(4_000_000.0).var(), rtol=1e-12)


def test_a_running_jobs_task_stream_grows_and_matches_its_trace(browser, cluster):
    client = cluster.client(timeout=120)
    job = client.submit("sum", np.arange(1_000_000.0), partitions=96, label="dashboard")
    browser.get(f"{cluster.dashboard_url}#stream/{job.job_id}")
    counts = []

    def grown() -> bool:
        bars = data(browser, "kernelBars") if data(browser, "streamJob") == job.job_id else None
        if bars is not None and (not counts or int(bars) != counts[-1]):
            counts.append(int(bars))
        return job.done() and len(counts) >= 2

    wait_for(grown, "the job to end with the stream drawn twice", timeout=120)
    assert counts == sorted(counts) and counts[0] < 96, counts  # it grew while the job ran
    trace = client.trace(job.job_id)
    drawn = sum(1 for p in trace.partitions if p.started_at and p.finished_at)
    wait_for(lambda: data(browser, "kernelBars") == str(drawn), f"{drawn} bars, one per attempt in the trace")
    assert data(browser, "streamJob") == job.job_id
    assert errors(browser) == []


def test_a_killed_agent_is_gone_from_the_cluster_page(browser, cluster):
    browser.get(f"{cluster.dashboard_url}#cluster")
    wait_for(lambda: data(browser, "agents") == "2", "two agents shown")
    killed = time.monotonic()
    cluster.kill_agent(1)
    # The coordinator drops it after its heartbeat timeout; the page shows that on its next update.
    wait_for(lambda: data(browser, "agents") == "1", "one agent shown", timeout=HEARTBEAT_TIMEOUT + 20)
    print(f"\nagent gone from the page {time.monotonic() - killed:.1f}s after SIGKILL "
          f"(heartbeat timeout {HEARTBEAT_TIMEOUT}s)")
    rows = browser.find_elements("css selector", "#agents tr.agent")
    assert len(rows) == 1
    assert errors(browser) == []


def test_the_task_stream_of_a_bigger_job_carries_its_latest_4000_attempts():
    """'the latest 4,000 attempts of bigger jobs': the stream's trace of a 4,100-partition job holds
    4,000 attempts, the job's last ones, and counts all of them."""
    import json
    import urllib.request

    with lepton.LocalCluster(agents=1) as cluster:
        client = cluster.client(timeout=120)
        job = client.submit("sum", np.arange(8_200.0), partitions=4_100)
        assert job.result()["sum"] == np.arange(8_200.0).sum()
        base, token = cluster.dashboard_url.split("?token=")
        with urllib.request.urlopen(f"{base}events?job={job.job_id}&token={token}", timeout=60) as stream:
            line = wait_for(lambda: (lambda text: text if text.startswith(b"data: ") else None)(stream.readline()),
                            "the first event")
        trace = json.loads(line[len(b"data: "):])["trace"]
        attempts = client.trace(job.job_id).partitions
        assert trace["attempts"] == len(attempts) >= 4_100
        assert len(trace["trace"]) == 4_000
        assert {a["partition"] for a in trace["trace"]} == {p.partition for p in attempts[-4_000:]}
