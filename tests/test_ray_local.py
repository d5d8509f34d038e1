"""The local Ray cluster prepare starts runs without auth, so nothing of it may listen beyond 127.0.0.1."""

import ipaddress
import os

import psutil


def _session_processes(session: str) -> list[psutil.Process]:
    """The driver and every process whose command line names the Ray session (GCS, raylet, workers, agents)."""
    found = [psutil.Process()]
    for proc in psutil.process_iter(["cmdline"]):
        if session in " ".join(proc.info["cmdline"] or []):
            found.append(proc)
    return found


def test_every_port_of_the_local_cluster_is_on_the_loopback_interface(ray_cluster):
    import ray

    ray.get(ray.remote(lambda: 1).remote())  # a worker process is up too
    node = ray._private.worker._global_node
    session = os.path.basename(node.get_session_dir_path())
    listening = [(proc.name(), conn.laddr.ip, conn.laddr.port) for proc in _session_processes(session)
                 for conn in proc.net_connections("inet") if conn.status == psutil.CONN_LISTEN]
    assert len({name for name, _, _ in listening}) >= 3, listening  # GCS, raylet, the driver's worker...
    exposed = [entry for entry in listening if not ipaddress.ip_address(entry[1].removeprefix("::ffff:")).is_loopback]
    assert not exposed, f"listening beyond 127.0.0.1: {exposed}"
    assert node.node_ip_address == "127.0.0.1"
