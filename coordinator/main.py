"""`lepton coordinator`: serve the coordinator until SIGTERM or Ctrl-C (its flags: flags.py)."""
from __future__ import annotations

import argparse
import logging
import os

from lepton.coordinator.coordinator import Config, Coordinator
from lepton.coordinator import dashboard, metrics
from lepton.coordinator.server import serve
from lepton import security
from lepton.logs import configure, event
from lepton import lifecycle
from lepton.serving import NOT_SERVING, SERVING, start_metrics
from lepton.tuning import keep_large_buffers_in_heap

log = logging.getLogger("lepton.coordinator")


def run(args: argparse.Namespace) -> int:
    configure("coordinator")
    creds = security.credentials_from_args(args, "coordinator")
    security.check_exposure("coordinator", creds, args.listen, args.metrics_listen,
                            plain_http=(args.dashboard_listen,))
    parent = lifecycle.ParentGuard.from_env()
    shutdown = lifecycle.Shutdown(args.shutdown_timeout)
    keep_large_buffers_in_heap(server=True)
    config = Config(tree_arity=args.tree_arity, target_partition_bytes=int(args.target_partition_mib * (1 << 20)),
                    heartbeat_timeout=args.heartbeat_timeout, max_job_bytes=int(args.max_job_mib * (1 << 20)),
                    agent_wait=args.agent_wait, data_dir=args.data_dir,
                    max_active_bytes=int(args.max_active_mib * (1 << 20)), max_agents=args.max_agents,
                    test_save_delay=args.test_slow_disk, placement=args.placement,
                    inline_bytes=int(args.inline_kib * 1024))
    leadership = store = None
    if args.etcd:  # high availability: a leader elected in etcd, and the metadata kept there
        from lepton.coordinator.etcd_store import EtcdStore
        from lepton.coordinator.leadership import Leadership, connect

        etcd = connect(args.etcd, ca=args.etcd_ca, cert=args.etcd_cert, key=args.etcd_key)

        def stepped_down(reason: str, leader: str) -> None:  # a standby again, until elected again
            health.set_all(NOT_SERVING)
            coordinator.step_down(reason, leader)

        leadership = Leadership(etcd, args.etcd_prefix, "", max(2, args.lease_ttl),
                                on_elected=lambda: (coordinator.take_over(), health.set_all(SERVING)),
                                on_lost=stepped_down)
        store = EtcdStore(etcd, args.etcd_prefix, leadership)
    coordinator = Coordinator(config, dial=creds.channel, store=store)
    if leadership is not None:
        coordinator.leads = lambda: leadership.leading
        coordinator.leader = lambda: "" if leadership.leader == leadership.address else leadership.leader
    metrics.register(coordinator)
    metrics_address = start_metrics(args.metrics_listen, **security.metrics_tls(creds))
    board = dashboard.start(coordinator, args.dashboard_listen, token=creds.token)  # the API's token
    server, port, health = serve(coordinator, args.listen, metrics_address,
                                 dashboard_address=board.address if board else "", creds=creds,
                                 max_client_jobs=args.max_client_jobs, leadership=leadership)
    address = f"{args.listen.rsplit(':', 1)[0]}:{port}"
    if leadership is not None:  # a standby until elected: health says so, and the gate turns calls away
        health.set_all(NOT_SERVING)
        leadership.address = args.advertise or address
        leadership.start()
    event(log, "coordinator.serving", address=address, metrics=metrics_address or "off",
          dashboard=board.address if board else "off")
    if args.ready_file:
        tmp = args.ready_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(address)
        os.replace(tmp, args.ready_file)
    parent.watch(shutdown.request)
    reason = shutdown.wait()
    event(log, "coordinator.stopping", reason=reason, bound=shutdown.bound)
    health.set_all(NOT_SERVING)
    shutdown.step("ending jobs")
    coordinator.stop()
    if leadership is not None:
        leadership.stop()  # hands the lead to a standby at once
    if board is not None:
        board.stop()
    shutdown.stop_server(server)
    return 0
