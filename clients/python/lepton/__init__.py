"""Lepton: a compute fabric for heterogeneous accelerator clusters.

`Client` talks to a coordinator; `LocalCluster` starts a real one (coordinator and agents as
processes on loopback) for use on a single machine.
"""
from lepton.client import Client, Dataset, Job, LeptonError
from lepton.local import LocalCluster

__all__ = ["Client", "Dataset", "Job", "LeptonError", "LocalCluster"]
