"""A wide-area network emulated in user space, for kernels without netem (sch_netem).

One process (``python bench/harness/wan.py CONFIG``, started by ``WanSwitch``) opens a TUN device
inside each of the given network namespaces and forwards IPv4 packets between them: every packet
a namespace sends to another's address is dropped with probability ``loss`` and otherwise written
to the destination's TUN device ``delay`` seconds after it was read (in order: a FIFO, like netem's
``delay D loss L`` on the sender's egress). So the round trip is 2·delay and each direction
loses ``loss``. Packets to an address no namespace has are dropped: nothing leaves the namespaces.
The switch records how late it wrote packets against their due time (its own scheduling error on
a loaded machine) and writes those counts to ``stats`` when it gets SIGTERM.
"""

from __future__ import annotations

import ctypes
import fcntl
import heapq
import json
import os
import random
import select
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
CLONE_NEWNET = 0x40000000


class WanSwitch:
    """Namespaces ``nodes`` ({Namespace: address}) on one /24 through the user-space switch; start()
    returns once every TUN device is up with its address; close() stops it and returns its stats."""

    def __init__(self, nodes: dict, *, delay: float, loss: float, dev: str = "wan0", prefix_len: int = 24, seed=0):
        self.nodes, self.delay, self.loss, self.dev, self.prefix_len, self.seed = (
            nodes,
            delay,
            loss,
            dev,
            prefix_len,
            seed,
        )
        self.proc: subprocess.Popen | None = None
        self.stats_path = Path(f"/tmp/wan-switch-{os.getpid()}.json")

    def start(self) -> WanSwitch:
        cfg = {
            "nodes": [[ns.name, addr] for ns, addr in self.nodes.items()],
            "dev": self.dev,
            "delay": self.delay,
            "loss": self.loss,
            "seed": self.seed,
            "stats": str(self.stats_path),
        }
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), json.dumps(cfg)], stdout=subprocess.PIPE, text=True
        )
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            self.proc.kill()
            raise RuntimeError(f"the WAN switch did not start: {line!r}")
        for ns, addr in self.nodes.items():
            ns.ip("addr", "add", f"{addr}/{self.prefix_len}", "dev", self.dev)
            ns.ip("link", "set", self.dev, "up")
        return self

    def close(self) -> dict:
        if self.proc is None:
            return {}
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        try:
            stats = json.loads(self.stats_path.read_text())
            self.stats_path.unlink()
            return stats
        except (OSError, ValueError):
            return {}


def _setns(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
    finally:
        os.close(fd)


def serve(cfg: dict) -> None:
    rng = random.Random(cfg["seed"])
    delay, loss = float(cfg["delay"]), float(cfg["loss"])
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    fds, by_addr = {}, {}
    for name, addr in cfg["nodes"]:
        _setns(name)
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", cfg["dev"].encode(), IFF_TUN | IFF_NO_PI))
        fds[fd] = name
        by_addr[bytes(int(x) for x in addr.split("."))] = fd
    ctypes.CDLL(None).setns(home, CLONE_NEWNET)
    try:
        os.nice(-10)  # its delays are what is measured: keep its own scheduling error small
    except OSError:
        pass
    stats = {"packets": 0, "bytes": 0, "dropped_loss": 0, "dropped_no_route": 0, "late_ms": {}}
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    print("ready", flush=True)
    poll = select.epoll()
    for fd in fds:
        poll.register(fd, select.EPOLLIN)
    queue: list[tuple[float, int, int, bytes]] = []
    seq = 0
    while not stop:
        timeout = max(0.0, queue[0][0] - time.monotonic()) if queue else 0.5
        try:
            events = poll.poll(timeout)
        except InterruptedError:
            continue
        now = time.monotonic()
        for fd, _ in events:
            while True:
                try:
                    pkt = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if len(pkt) < 20 or pkt[0] >> 4 != 4:
                    continue
                dst = by_addr.get(pkt[16:20])
                if dst is None:
                    stats["dropped_no_route"] += 1
                    continue
                if rng.random() < loss:
                    stats["dropped_loss"] += 1
                    continue
                seq += 1
                heapq.heappush(queue, (now + delay, seq, dst, pkt))
        now = time.monotonic()
        while queue and queue[0][0] <= now:
            due, _, dst, pkt = heapq.heappop(queue)
            try:
                os.write(dst, pkt)
            except OSError:
                continue
            stats["packets"] += 1
            stats["bytes"] += len(pkt)
            bucket = str(min(50, int((now - due) * 1000)))  # ms late, 50 = 50 or more
            stats["late_ms"][bucket] = stats["late_ms"].get(bucket, 0) + 1
    Path(cfg["stats"]).write_text(json.dumps(stats))


if __name__ == "__main__":
    serve(json.loads(sys.argv[1]))
