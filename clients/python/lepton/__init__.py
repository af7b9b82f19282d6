"""Lepton: a compute fabric for heterogeneous accelerator clusters.

`Client` talks to a coordinator; `LocalCluster` starts a real one (coordinator and agents as
processes on loopback) for use on a single machine.
"""
from lepton.client import Client, Dataset, Job
from lepton.errors import (AlreadyExists, FailedPrecondition, InvalidInput, LeptonError, NotFound,
                           ResourceExhausted, Unavailable)
from lepton.local import LocalCluster

__all__ = ["AlreadyExists", "Client", "Dataset", "FailedPrecondition", "InvalidInput", "Job", "LeptonError",
           "LocalCluster", "NotFound", "ResourceExhausted", "Unavailable"]
