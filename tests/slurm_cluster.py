"""A single-node Slurm cluster for tests: munged, slurmctld and slurmd on this machine.

Debian's `slurm-wlm` and `munge` (`.ci/run` installs them). Everything lives in a temporary folder
with its own slurm.conf (SLURM_CONF) and unusual ports, so a machine's real Slurm, if any, is left
alone. `unavailable()` says why one cannot be started, for skips.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from waits import wait_for

DAEMONS = ("munged", "slurmctld", "slurmd")
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")


def unavailable() -> str | None:
    if os.geteuid() != 0:
        return "starting slurmd needs root"
    missing = [d for d in (*DAEMONS, "sbatch", "scancel") if shutil.which(d) is None]
    if missing:
        return f"not installed: {', '.join(missing)} (Debian packages slurm-wlm and munge)"
    return None



class SlurmCluster:
    def __init__(self):
        self._dir = tempfile.TemporaryDirectory(prefix="lepton-slurm-")
        self.root = Path(self._dir.name)
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._munged = False

    def start(self) -> "SlurmCluster":
        for folder in ("state", "spool", "log"):
            (self.root / folder).mkdir()
        self.conf.write_text("\n".join([
            "ClusterName=leptontest", f"SlurmctldHost={self.node}", "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", f"StateSaveLocation={self.root}/state", f"SlurmdSpoolDir={self.root}/spool",
            f"SlurmctldPidFile={self.root}/slurmctld.pid", f"SlurmdPidFile={self.root}/slurmd.pid",
            f"SlurmctldLogFile={self.root}/log/slurmctld.log", f"SlurmdLogFile={self.root}/log/slurmd.log",
            "SlurmctldPort=16917", "SlurmdPort=16918",
            # No cgroups in a container: track job processes by parentage, bind no tasks.
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "MpiDefault=none", "ReturnToService=2",
            "SchedulerType=sched/builtin", "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
            "JobCompType=jobcomp/none", "AccountingStorageType=accounting_storage/none", "KillWait=5",
            f"NodeName={self.node} CPUs={os.cpu_count()} State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4", ""]))
        if not MUNGE_SOCKET.exists():
            Path("/run/munge").mkdir(parents=True, exist_ok=True)
            shutil.chown("/run/munge", "munge", "munge")
            subprocess.run(["runuser", "-u", "munge", "--", "munged"], check=True, capture_output=True, text=True)
            self._munged = True
            wait_for(MUNGE_SOCKET.exists, "munged")
        subprocess.run(["slurmctld", "-c"], env=self.env, check=True, capture_output=True, text=True)
        subprocess.run(["slurmd", "-c"], env=self.env, check=True, capture_output=True, text=True)
        wait_for(lambda: "idle" in self.cmd(["sinfo", "-h", "-o", "%T"]).stdout, "the node to be idle")
        return self

    def cmd(self, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, **kwargs)

    def sbatch(self, script: Path, cwd: Path) -> str:
        done = self.cmd(["sbatch", "--parsable", str(script)], cwd=cwd, check=True)
        return done.stdout.strip().split(";")[0]

    def state(self, job_id: str) -> str:
        """The job's state (PENDING, RUNNING, COMPLETED, CANCELLED, FAILED, ...)."""
        out = self.cmd(["scontrol", "-o", "show", "job", job_id]).stdout
        for field in out.split():
            if field.startswith("JobState="):
                return field.split("=", 1)[1]
        return "GONE"

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted((self.root / "log").glob("*.log")))

    def stop(self) -> None:
        for pid_file in ("slurmd.pid", "slurmctld.pid"):
            path = self.root / pid_file
            if path.exists():
                try:
                    os.kill(int(path.read_text()), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass
        for pid_file in ("slurmd.pid", "slurmctld.pid"):
            wait_for(lambda: not _alive(self.root / pid_file), pid_file, timeout=30)
        if self._munged:
            pid = Path("/run/munge/munged.pid")
            if pid.exists():
                os.kill(int(pid.read_text()), signal.SIGTERM)
        self._dir.cleanup()


def _alive(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text()), 0)
        return True
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return False


def processes_with_env(name: str, value: str) -> list[int]:
    """Pids whose environment holds name=value (how a job's leftovers are found)."""
    wanted = f"{name}={value}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            pass  # gone, or not ours to read
    return pids
