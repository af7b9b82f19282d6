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


def cells(browser, table: str) -> list[list[str]]:
    """The text of each cell of each body row of table#`table` (its section may be hidden)."""
    return browser.execute_script(f"return [...document.querySelectorAll('#{table} tbody tr')]"
                                  ".map(r => [...r.cells].map(c => c.textContent));")


def chart(browser, div: str) -> list[dict]:
    """The traces Plotly drew in div#`div`: name, y, and the number of bars or points."""
    return browser.execute_script(f"return (document.getElementById('{div}').data || [])"
                                  ".map(t => ({name: t.name, y: t.y, n: t.x.length, text: t.hovertext,"
                                  " outline: t.marker && t.marker.line ? t.marker.line.color : null}));")


def gib(memory_bytes: int) -> str:
    return f"{memory_bytes / 2 ** 30:.1f} GiB"


def shown(browser, condition, what: str):
    """Wait until `condition()` holds on the page (it redraws once a second), and say what it showed."""
    try:
        return wait_for(condition, what, timeout=30)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the page's tables: {browser.execute_script('return document.body.innerText;')}")


def test_each_page_shows_what_the_readme_says(browser, cluster):
    """The README's list of what each page shows, checked against the coordinator's own answers over
    gRPC (GetClusterStatus, GetJob, GetJobTrace): agents with their devices, credits, heartbeat and
    measured throughput; datasets and where their partitions live; jobs with progress, state, retries
    and errors, linking to their task stream; the stream's one row per device and its phases; the
    data movement and device pages."""
    import re

    from lepton.v1 import job_pb2

    client = cluster.client(timeout=120)
    client.put("shown", np.ones((1_000, 3)), partitions=6)
    done = client.submit("sum", np.arange(100_000.0), partitions=12, label="shown-done")
    assert done.result()["sum"] == np.arange(100_000.0).sum()
    doomed = client.submit("var", np.arange(2_000_000.0), partitions=400, label="shown-cancelled")
    wait_for(lambda: client.job(doomed.job_id).partitions_done > 0, "the job to be doomed to start")
    client.cancel(doomed.job_id)
    state = lambda job_id: job_pb2.JobState.Name(client.job(job_id).state).removeprefix("JOB_STATE_")  # noqa: E731
    wait_for(lambda: state(doomed.job_id) == "CANCELLED", "the job to be cancelled")
    wait_for(lambda: all(a.in_flight == 0 for a in client.cluster_status().agents), "the agents to be idle")

    # Cluster: one row per device, the agent's own cells on its first; what GetClusterStatus says.
    browser.get(f"{cluster.dashboard_url}#cluster")

    def cluster_page_agrees() -> bool:
        want = []
        for a in client.cluster_status().agents:
            for i, d in enumerate(a.devices):
                own = [f"{a.agent_id} {a.name}", a.address, None, f"{a.in_flight} / {a.credits}",
                       str(a.partitions_done)] if i == 0 else [""] * 5
                want.append(own + [d.name, d.kind, gib(d.memory_bytes), sorted(d.throughput)])
        got = []
        for row in cells(browser, "agents"):
            speeds = [] if row[8] == "-" else row[8].split(", ")
            assert all(re.fullmatch(r"\S+ \d+(\.\d\d)? [MG]B/s", s) for s in speeds), row[8]
            if row[0]:
                assert re.fullmatch(r"\d+\.\d s", row[2]), row[2]  # the heartbeat's age
            got.append(row[:2] + [None if row[0] else ""] + row[3:8] + [sorted(s.split()[0] for s in speeds)])
        return got == want and len(want) == 2

    wait_for(lambda: any("sum" in a.devices[0].throughput for a in client.cluster_status().agents),
             "a device's measured throughput for sum (heartbeats carry it)")
    shown(browser, cluster_page_agrees, "the cluster page to show each agent's devices as GetClusterStatus does")
    agent_ids = {a.agent_id for a in client.cluster_status().agents}

    def dataset_row():
        rows = [r for r in cells(browser, "datasets") if r[0] == "shown"]
        return rows[0] if rows else None

    row = shown(browser, dataset_row, "the resident dataset")
    assert row[1:4] == ["1000×3", "0.0", "6"], row
    placement = dict(p.split(": ") for p in row[4].split(", "))
    assert set(placement) <= agent_ids and sum(map(int, placement.values())) == 6, row  # where they live

    # Jobs: both jobs, with the state, progress, retries and error the coordinator reports.
    browser.get(f"{cluster.dashboard_url}#jobs")

    def job_rows():
        rows = {r[0]: r for r in cells(browser, "joblist")}
        return rows if {done.job_id, doomed.job_id} <= rows.keys() else None

    rows = shown(browser, job_rows, "both jobs listed")
    for job in (done, doomed):
        status = client.job(job.job_id)
        error = f"{status.error_code} {status.error_message}".strip()
        assert rows[job.job_id][1:4] == [status.op, status.label, state(job.job_id)], rows[job.job_id]
        assert rows[job.job_id][4].strip() == f"{status.partitions_done}/{status.partitions_total}"
        assert rows[job.job_id][7:9] == [str(status.retries), error], rows[job.job_id]
    assert rows[done.job_id][1:4] == ["sum", "shown-done", "SUCCEEDED"] and rows[done.job_id][4].strip() == "12/12"
    assert rows[doomed.job_id][3] == "CANCELLED" and rows[doomed.job_id][8], rows[doomed.job_id]

    # A job links to its task stream: one row per device of its trace, bars by phase.
    browser.find_element("css selector", f'a.job[href="#stream/{done.job_id}"]').click()
    shown(browser, lambda: data(browser, "streamJob") == done.job_id, "the linked job's task stream")
    assert browser.find_element("id", "stream-title").text.startswith(f"Task stream of {done.job_id} (sum, SUCCEEDED)")
    attempts = client.trace(done.job_id).partitions
    traces = {t["name"]: t for t in chart(browser, "stream-chart")}
    assert list(traces) == ["queued", "transfer + agent queue", "kernel", "returned", "speculative / retried"]
    ran = [a for a in attempts if a.started_at and a.finished_at]
    assert set(traces["kernel"]["y"]) == {f"{a.agent_id}/{a.device}" for a in ran}
    assert sorted(int(t.split()[1].rstrip(",")) for t in traces["kernel"]["text"]) == \
        sorted(a.partition for a in ran)
    again = [p for p in {a.partition for a in attempts} if sum(a.partition == p for a in attempts) > 1]
    assert traces["speculative / retried"]["n"] == sum(a.partition in again and a.started_at > 0 for a in attempts)

    # Data movement: the four rates over time. Devices: busy time and memory of every device.
    browser.get(f"{cluster.dashboard_url}#movement")
    shown(browser, lambda: [t["name"] for t in chart(browser, "movement-chart")] ==
          ["client → coordinator", "coordinator → agents", "agents → coordinator", "coordinator → client"],
          "the four byte rates")
    assert all(t["n"] > 0 for t in chart(browser, "movement-chart"))
    browser.get(f"{cluster.dashboard_url}#devices")
    agents = client.cluster_status().agents
    devices = sorted([d.name, a.agent_id, d.kind, d.description, gib(d.memory_bytes), ", ".join(d.ops)]
                     for a in agents for d in a.devices)
    shown(browser, lambda: sorted(cells(browser, "devicelist")) == devices, "every device with its memory")
    names = {f"{a.agent_id}/{d.name}" for a in agents for d in a.devices}
    assert names <= {t["name"] for t in chart(browser, "busy-chart")}
    assert errors(browser) == []


@pytest.mark.slow  # about 15 s: the job ends only once speculative copies replace the straggler's runs
def test_the_task_stream_outlines_speculative_copies_in_red(browser):
    """'retried and speculative copies outlined in red': a straggler (every partition 10 minutes)
    is outrun by copies, and the stream outlines every attempt of those partitions, in red."""
    with lepton.LocalCluster(agents=1) as cluster:
        cluster.add_agent("numpy", ["--test-delay", "600:600"])
        client = cluster.client(timeout=120)
        job = client.submit("sum", np.arange(400_000.0), partitions=8)
        assert job.result()["sum"] == np.arange(400_000.0).sum()
        attempts = client.trace(job.job_id).partitions
        twice = {a.partition for a in attempts if sum(b.partition == a.partition for b in attempts) > 1}
        assert twice, "no partition ran twice"
        browser.get(f"{cluster.dashboard_url}#stream/{job.job_id}")
        shown(browser, lambda: data(browser, "streamJob") == job.job_id, "the job's task stream")
        outlined = chart(browser, "stream-chart")[-1]
        assert outlined["name"] == "speculative / retried" and outlined["outline"] == "#cf222e"
        want = sorted(a.partition for a in attempts if a.partition in twice and a.started_at)
        assert sorted(int(t.split()[1].rstrip(",")) for t in outlined["text"]) == want and want
        assert errors(browser) == []
        browser.get("about:blank")  # leave before this cluster stops: its page would log failed reconnects
    browser.get_log("browser")  # and drop anything logged meanwhile, which the next test would read


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
