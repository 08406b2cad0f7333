"""The test cluster starts even when a node's port is taken between its pick and its bind
(a parallel test's server): the node exits at once, and starts again on new ports. Seen
once on a loaded CI machine, where the whole test errored at setup."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.support.redis_cluster import LocalCluster


async def test_a_node_whose_port_was_taken_starts_again_on_another(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "cluster")
    taken = cluster.nodes[1].port
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", taken))
    holder.listen()
    try:
        await cluster.start()
        assert cluster.nodes[1].port != taken
        async with cluster.nodes[0].client() as client:
            info = await client.execute_command("CLUSTER", "INFO")
        text = info.decode() if isinstance(info, bytes) else str(info)
        assert "cluster_state:ok" in text
    finally:
        cluster.stop()
        holder.close()
