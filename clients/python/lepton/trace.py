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


def summary(trace: pb.GetJobTraceResponse) -> list[str]:
    """Busy time per device over the job's span, and partitions slower than twice the median."""
    done = [p for p in trace.partitions if p.finished_at]
    if not done:
        return ["no partition has finished"]
    span = max(p.finished_at for p in done) - min(p.started_at for p in done)
    busy = defaultdict(float)
    for p in done:
        busy[(p.agent_id, p.device)] += p.finished_at - p.started_at
    lines = [f"{agent} {device}: busy {seconds:.3f}s of {span:.3f}s ({100 * seconds / span if span else 100:.0f}%)"
             for (agent, device), seconds in sorted(busy.items())]
    median = statistics.median(p.finished_at - p.started_at for p in done)
    slow = [p for p in done if p.finished_at - p.started_at > 2 * median > 0]
    lines.append(f"stragglers (> 2x the median {median:.3f}s): "
                 + (", ".join(f"{p.partition} on {p.agent_id}" for p in slow) if slow else "none"))
    retried = [p for p in trace.partitions if p.outcome not in ("done", "running")]
    if retried:
        lines.append("failed attempts: " + ", ".join(f"{p.partition} ({p.outcome})" for p in retried))
    return lines


def plot(trace: pb.GetJobTraceResponse, path: str) -> None:
    """A timeline, one row per device: dispatch wait in grey, kernels in colour, failures in red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = trace.job.submitted_at
    lanes = sorted({(p.agent_id, p.device or "?") for p in trace.partitions})
    index = {lane: i for i, lane in enumerate(lanes)}
    fig, ax = plt.subplots(figsize=(10, 1.6 + 0.5 * max(1, len(lanes))))
    for p in trace.partitions:
        y = index[(p.agent_id, p.device or "?")]
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
    ax.set_yticks(range(len(lanes)), [f"{agent} {device}" for agent, device in lanes])
    ax.set_xlabel("seconds since submission")
    ax.set_title(f"{trace.job.job_id} ({trace.job.op}): {len(trace.partitions)} partition attempts")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
