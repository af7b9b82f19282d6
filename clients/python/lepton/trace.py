"""Job traces: per-partition timings as a table, a summary of devices and stragglers, and a timeline."""
from __future__ import annotations

import statistics
from collections import defaultdict

from lepton.v1 import coordinator_service_pb2 as pb


def rows(trace: pb.GetJobTraceResponse) -> list[list]:
    t0 = trace.job.submitted_at
    out = []
    for p in sorted(trace.partitions, key=lambda p: (p.partition, p.attempt)):
        ran = p.finished_at - p.started_at if p.finished_at else None
        out.append([p.partition, p.attempt, p.agent_id, p.device or "-", p.rows,
                    f"{p.sent_at - p.queued_at:.3f}", f"{p.sent_at - t0:.3f}",
                    f"{ran:.3f}" if ran is not None else "-",
                    f"{p.received_at - t0:.3f}" if p.received_at else "-", p.outcome])
    return out


HEADERS = ["PART", "TRY", "AGENT", "DEVICE", "ROWS", "QUEUED S", "SENT AT", "RAN S", "BACK AT", "OUTCOME"]


def device_labels(status) -> dict[tuple[str, str], str]:
    """(agent id, device) -> "agent-1 name device [throttled 4x]" from a ClusterStatus: the trace names
    devices only, the status says what each is (a throttle is part of its description)."""
    labels = {}
    for agent in status.agents:
        for d in agent.devices:
            throttle = d.description[d.description.rfind(" [throttled"):] if "[throttled" in d.description else ""
            labels[(agent.agent_id, d.name)] = f"{agent.agent_id} {d.name}{throttle}"
    return labels


def shares(trace: pb.GetJobTraceResponse) -> dict[tuple[str, str], dict]:
    """Per (agent, device): the partitions and rows it computed (the attempts that counted), its busy
    seconds, when its first kernel started and its last one finished (seconds since submission),
    and its idle seconds in between (gaps between its kernels: dispatch, transfer, waiting for work)."""
    t0, out, spans = trace.job.submitted_at, {}, defaultdict(list)
    for p in trace.partitions:
        if p.outcome != "done" or not p.finished_at:
            continue
        lane = out.setdefault((p.agent_id, p.device or "?"),
                              {"partitions": 0, "rows": 0, "busy": 0.0, "first": float("inf"), "last": 0.0})
        lane["partitions"] += 1
        lane["rows"] += p.rows
        lane["busy"] += p.finished_at - p.started_at
        lane["first"] = min(lane["first"], p.started_at - t0)
        lane["last"] = max(lane["last"], p.finished_at - t0)
        spans[(p.agent_id, p.device or "?")].append((p.started_at - t0, p.finished_at - t0))
    for key, lane in out.items():
        covered, reach = 0.0, lane["first"]
        for start, end in sorted(spans[key]):  # (a device with several workers overlaps its kernels)
            covered += max(0.0, end - max(start, reach))
            reach = max(reach, end)
        lane["idle"] = (lane["last"] - lane["first"]) - covered
    return out


def phases(trace: pb.GetJobTraceResponse) -> dict[str, float]:
    """Where a job's time went, in seconds since submission: its first kernel's start, its last
    kernel's end, its last partial's arrival at the coordinator and the job's end (after the last
    aggregation and the finalize)."""
    t0, done = trace.job.submitted_at, [p for p in trace.partitions if p.outcome == "done" and p.finished_at]
    if not done:
        return {}
    return {"first_kernel": min(p.started_at for p in done) - t0,
            "last_kernel": max(p.finished_at for p in done) - t0,
            "last_partial": max(p.received_at for p in done) - t0,
            "finished": (trace.job.finished_at - t0) if trace.job.finished_at else 0.0}


def summary(trace: pb.GetJobTraceResponse, labels: dict[tuple[str, str], str] | None = None) -> list[str]:
    """Each device's share of the rows and when it finished, its busy time over the job's span, and
    partitions slower than twice the median."""
    done = [p for p in trace.partitions if p.finished_at]
    if not done:
        return ["no partition has finished"]
    span = max(p.finished_at for p in done) - min(p.started_at for p in done)
    lanes, labels = shares(trace), labels or {}
    total = sum(lane["rows"] for lane in lanes.values()) or 1
    lines = [f"{labels.get(key, ' '.join(key))}: {lane['partitions']} partitions, {100 * lane['rows'] / total:.0f}% "
             f"of the rows, last done at {lane['last']:.3f}s; busy {lane['busy']:.3f}s of {span:.3f}s "
             f"({100 * lane['busy'] / span if span else 100:.0f}%), idle between its kernels {lane['idle']:.3f}s"
             for key, lane in sorted(lanes.items())]
    times = phases(trace)
    if times.get("finished"):
        lines.append(f"first kernel at {times['first_kernel']:.3f}s, last kernel done {times['last_kernel']:.3f}s, "
                     f"its partial in {times['last_partial']:.3f}s, job done {times['finished']:.3f}s")
    median = statistics.median(p.finished_at - p.started_at for p in done)
    slow = [p for p in done if p.finished_at - p.started_at > 2 * median > 0]
    lines.append(f"stragglers (> 2x the median {median:.3f}s): "
                 + (", ".join(f"{p.partition} on {p.agent_id}" for p in slow) if slow else "none"))
    retried = [p for p in trace.partitions if p.outcome not in ("done", "running")]
    if retried:
        lines.append("failed attempts: " + ", ".join(f"{p.partition} ({p.outcome})" for p in retried))
    return lines


def plot(trace: pb.GetJobTraceResponse, path: str, labels: dict[tuple[str, str], str] | None = None) -> None:
    """A timeline, one row per device: dispatch wait in grey, kernels in colour, failures in red;
    each row says its share of the rows and when its last partition finished."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = trace.job.submitted_at
    lanes = sorted({(p.agent_id, p.device) for p in trace.partitions if p.device})
    # An attempt that never started names no device: draw it on its agent's first lane.
    first = {}
    for agent, device in lanes:
        first.setdefault(agent, (agent, device))
    lanes += sorted({(p.agent_id, "?") for p in trace.partitions if not p.device and p.agent_id not in first})
    index = {lane: i for i, lane in enumerate(lanes)}
    fig, ax = plt.subplots(figsize=(10, 1.6 + 0.5 * max(1, len(lanes))))
    for p in trace.partitions:
        y = index[(p.agent_id, p.device) if p.device else first.get(p.agent_id, (p.agent_id, "?"))]
        end = p.started_at or p.received_at or p.sent_at
        ax.barh(y, end - p.sent_at, left=p.sent_at - t0, height=0.3, color="0.8")
        if p.finished_at:
            color = "tab:blue" if p.outcome == "done" else "tab:red"
            ax.barh(y, p.finished_at - p.started_at, left=p.started_at - t0, height=0.6, color=color,
                    edgecolor="white", linewidth=0.5)
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color="0.8", label="sent, not started (transfer, queue)"),
                       Patch(color="tab:blue", label="kernel"), Patch(color="tab:red", label="failed")],
              loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=3, frameon=False, fontsize="small")
    lane_shares, labels = shares(trace), labels or {}
    total = sum(lane["rows"] for lane in lane_shares.values()) or 1
    for lane, share in lane_shares.items():
        ax.plot([share["last"]] * 2, [index[lane] - 0.4, index[lane] + 0.4], color="black", linewidth=1.5)
        ax.annotate(f" {100 * share['rows'] / total:.0f}% of rows, done {share['last']:.2f}s",
                    (share["last"], index[lane]), va="center", fontsize="small")
    ax.set_yticks(range(len(lanes)), [labels.get(lane, f"{lane[0]} {lane[1]}") for lane in lanes])
    ax.set_xlabel("seconds since submission")
    ax.set_title(f"{trace.job.job_id} ({trace.job.op}): {len(trace.partitions)} partition attempts")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
