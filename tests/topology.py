"""Real Redis topologies for tests and bench/failover: a local Cluster, a Sentinel set,
and a TCP proxy that can cut a replication link. Everything runs on free ports in
temp dirs and is stopped by its owner; nothing touches the shared Redis."""

from __future__ import annotations

import random
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import redis

from harness import RedisServer, free_port, wait_for


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        port = random.randint(20000, 55000)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _info(client: redis.Redis, section: str) -> dict[str, Any]:
    info: dict[str, Any] = client.info(section)
    return info


class Cluster:
    """A local Redis Cluster: ``primaries`` primaries with ``replicas`` replicas each."""

    def __init__(self, workdir: Path, primaries: int = 3, replicas: int = 1, node_timeout_ms: int = 2000) -> None:
        self.workdir, self.primaries, self.replicas = workdir, primaries, replicas
        self.node_timeout_ms = node_timeout_ms
        self.nodes: list[RedisServer] = []

    def start(self) -> Cluster:
        args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", str(self.node_timeout_ms),
                "--repl-diskless-sync-delay", "0"]
        for i in range(self.primaries * (1 + self.replicas)):
            self.nodes.append(RedisServer(self.workdir / f"node{i}", args=args, port=free_cluster_port()).start())
        cli = shutil.which("redis-cli")
        assert cli, "redis-cli is not installed"
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes), "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=60, stdin=subprocess.DEVNULL,
        )
        wait_for(self._settled, 30, interval=0.2, what="the cluster to agree on its slots")
        return self

    def _settled(self) -> bool:
        for n in self.nodes:
            c = n.client()
            if _info(c, "cluster").get("cluster_enabled") != 1 or c.execute_command("CLUSTER", "INFO").find(b"cluster_state:ok") < 0:
                return False
            if len(c.execute_command("CLUSTER", "NODES").splitlines()) != len(self.nodes):
                return False
            repl = _info(c, "replication")
            if repl["role"] == "slave" and repl.get("master_link_status") != "up":
                return False  # synced, so that WAIT can count it
        return True

    @property
    def url(self) -> str:
        """Two startup nodes are enough; the client discovers the rest."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:2])

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.nodes[0].port, socket_timeout=10)

    def node_ids(self) -> dict[int, str]:
        out = {}
        for n in self.nodes:
            out[n.port] = n.client().execute_command("CLUSTER", "MYID").decode()
        return out

    def owner(self, slot: int) -> RedisServer:
        for n in self.nodes:
            c = n.client()
            if _info(c, "replication")["role"] != "master":
                continue
            for line in c.execute_command("CLUSTER", "NODES").decode().splitlines():
                fields = line.split()
                if "myself" in fields[2]:
                    for r in fields[8:]:
                        lo, _, hi = r.partition("-")
                        if not r.startswith("[") and int(lo) <= slot <= int(hi or lo):
                            return n
        raise AssertionError(f"no node owns slot {slot}")

    def primaries_now(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.proc is not None and _info(n.client(), "replication")["role"] == "master"]

    def migrate_slot(self, slot: int, target: RedisServer, pause: float = 0.0) -> int:
        """Move one slot to ``target`` the way redis-cli --cluster reshard does, key by key.

        With ``pause`` the slot stays half-migrated that long (some keys on each
        side: multi-key commands get TRYAGAIN, single keys ASK). Returns how many keys moved.
        """
        source = self.owner(slot)
        ids = self.node_ids()
        src, dst = source.client(), target.client()
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", ids[source.port])
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", ids[target.port])
        keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)
        moved = 0
        half = max(1, len(keys) // 2)
        for batch in (keys[:half], keys[half:]):
            if batch:
                src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "REPLACE", "KEYS", *batch)
                moved += len(batch)
            if pause and moved < len(keys):
                time.sleep(pause)
        while rest := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000):  # created meanwhile
            src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "REPLACE", "KEYS", *rest)
            moved += len(rest)
        for n in [target, source] + [p for p in self.primaries_now() if p not in (target, source)]:
            n.client().execute_command("CLUSTER", "SETSLOT", slot, "NODE", ids[target.port])
        return moved

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


class SentinelSet:
    """``count`` sentinels monitoring ``primary`` as ``name`` (quorum: a majority)."""

    def __init__(self, workdir: Path, primary: RedisServer, name: str = "mymaster", count: int = 3,
                 down_after_ms: int = 1000, failover_timeout_ms: int = 60000) -> None:
        self.workdir, self.primary, self.name, self.count = workdir, primary, name, count
        self.down_after_ms, self.failover_timeout_ms = down_after_ms, failover_timeout_ms
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self._clients: list[redis.Redis] = []

    def start(self, replicas: int = 1) -> SentinelSet:
        exe = shutil.which("redis-server")
        assert exe
        for i in range(self.count):
            d = self.workdir / f"sentinel{i}"
            d.mkdir(parents=True, exist_ok=True)
            port = free_port()
            conf = d / "sentinel.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {d}\nlogfile {d / 'sentinel.log'}\n"
                f"sentinel monitor {self.name} 127.0.0.1 {self.primary.port} {self.count // 2 + 1}\n"
                f"sentinel down-after-milliseconds {self.name} {self.down_after_ms}\n"
                # long: it also delays sentinel "fixing" a replica that replicates through a proxy
                f"sentinel failover-timeout {self.name} {self.failover_timeout_ms}\n"
                f"sentinel parallel-syncs {self.name} 1\n"
            )
            self.procs.append(subprocess.Popen([exe, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            self.ports.append(port)
        wait_for(lambda: self._ready(replicas), 30, interval=0.2, what="sentinels to find each other and the replicas")
        return self

    def client(self, i: int = 0) -> redis.Redis:
        while len(self._clients) < len(self.ports):
            self._clients.append(redis.Redis(port=self.ports[len(self._clients)], socket_timeout=5))
        return self._clients[i]

    def _ready(self, replicas: int) -> bool:
        try:
            for i in range(self.count):
                m = self.client(i).sentinel_master(self.name)
                if int(m["num-other-sentinels"]) != self.count - 1 or int(m["num-slaves"]) < replicas:
                    return False
        except redis.RedisError:
            return False
        return True

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{p}" for p in self.ports)

    def master_ports(self) -> list[int]:
        """The primary's port according to each sentinel that answers (they learn a switch at different times)."""
        ports = []
        for i in range(self.count):
            try:
                addr = self.client(i).sentinel_get_master_addr_by_name(self.name)
            except redis.RedisError:
                continue
            if addr:
                ports.append(int(addr[1]))
        return ports

    def stop(self) -> None:
        for c in self._clients:
            c.close()
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


class Proxy:
    """A TCP forwarder to 127.0.0.1:``target``; ``cut()`` black-holes it (no bytes
    pass, sockets stay open), as a network partition would."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = free_port()
        self.cut_event = threading.Event()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Proxy:
        self._thread.start()
        return self

    def cut(self) -> None:
        self.cut_event.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            socks = [self._listener] + ([] if self.cut_event.is_set() else [s for pair in self._pairs for s in pair])
            ready, _, _ = select.select(socks, [], [], 0.05)
            for s in ready:
                if s is self._listener:
                    client, _ = s.accept()
                    upstream = socket.create_connection(("127.0.0.1", self.target))
                    self._pairs.append((client, upstream))
                    continue
                pair = next(p for p in self._pairs if s in p)
                other = pair[1] if s is pair[0] else pair[0]
                try:
                    data = s.recv(65536)
                    if data:
                        other.sendall(data)
                        continue
                except OSError:
                    pass
                for x in pair:
                    x.close()
                self._pairs.remove(pair)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for pair in self._pairs:
            for s in pair:
                s.close()
        self._listener.close()
