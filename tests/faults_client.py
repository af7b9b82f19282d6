"""The client host of tests/test_faults.py's link-cut test: argv = address, x.npy, out.npy, partitions.

Runs a sum, saying "started" once a quarter of its partitions are done (the test then cuts a link)
and "first done" when it ends (the test restores the link); then waits until three agents are back
and runs the sum again. Saves both results, for a bitwise comparison."""
from __future__ import annotations

import sys

import numpy as np

import lepton
from waits import wait_for  # this script's directory is on sys.path


def wait_for_agents(client, count: int) -> None:
    wait_for(lambda: len(client.cluster_status().agents) >= count, f"{count} agents to join", 120)


def main(address: str, x_path: str, out: str, partitions: int) -> None:
    x = np.load(x_path)
    with lepton.Client(address, timeout=300) as client:
        wait_for_agents(client, 3)
        job = client.submit("sum", x, partitions=partitions)
        said = False
        for status in job:
            if not said and status.partitions_done >= partitions // 4:
                print("started", flush=True)
                said = True
        first = job.result()["sum"]
        print("first done", flush=True)
        wait_for_agents(client, 3)  # the restored agent rejoins
        second = client.sum(x, partitions=partitions)
    np.save(out, np.stack([first, second]))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
