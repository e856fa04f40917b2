"""Network namespaces a benchmark creates, runs processes in and removes again (needs root and
iproute2). Traffic stays on a namespace's own loopback, or on a veth link between two namespaces
made here (addresses that exist nowhere else): never on the host's interfaces or off the machine.
Deleting a namespace deletes the veth end in it, and so the link.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

from harness.report import log


def available() -> bool:
    """Whether this process can make namespaces: root and the `ip` command."""
    return os.geteuid() == 0 and shutil.which("ip") is not None


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


class Namespace:
    """A network namespace with ``lo`` up. close() stops whatever runs in it (ours gracefully first)
    and deletes it; as a context manager it is created on entry and closed on exit."""

    def __init__(self, name: str):
        self.name = name
        self.procs: list[subprocess.Popen] = []
        self.created = False

    def create(self) -> Namespace:
        ip("netns", "add", self.name)
        self.created = True
        self.ip("link", "set", "lo", "up")
        return self

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """`ip -n <name> ...`: configure something inside the namespace."""
        return ip("-n", self.name, *args, check=check)

    def prefix(self) -> list[str]:
        """The argv prefix that runs a command inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def popen(self, argv: list[str], **kw) -> subprocess.Popen:
        # ip netns exec execs the command: the Popen's pid is the command itself. A new session keeps a
        # terminal's Ctrl-C away from it (the benchmark stops everything itself, in order).
        p = subprocess.Popen([*self.prefix(), *argv], start_new_session=True, **kw)
        self.procs.append(p)
        return p

    def run(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        """Run a short command inside the namespace and wait for it (output captured as text)."""
        return subprocess.run([*self.prefix(), *argv], capture_output=True, text=True, **kw)

    def counters(self, dev: str = "lo") -> tuple[int, int]:
        """(tx_bytes, tx_packets) of an interface in the namespace."""
        stats = f"/sys/class/net/{dev}/statistics/"
        out = self.run(["cat", stats + "tx_bytes", stats + "tx_packets"], check=True).stdout.split()
        return int(out[0]), int(out[1])

    def pids(self) -> list[int]:
        if not self.created:
            return []
        r = subprocess.run(["ip", "netns", "pids", self.name], capture_output=True, text=True)
        return [int(x) for x in r.stdout.split() if x.strip().isdigit()]

    def __enter__(self) -> Namespace:
        return self.create()

    def __exit__(self, *exc) -> None:
        try:
            self.close()
        except KeyboardInterrupt:  # a signal during clean-up: finish it (further signals are ignored), then unwind
            self.close()
            raise

    def close(self) -> None:
        """Terminate our processes (gracefully first), then anything left in the namespace, then delete it."""
        for p in self.procs:
            if p.poll() is None:
                _signal(p.pid, signal.SIGTERM)
        deadline = time.time() + 15
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                pass
        for p in self.procs:
            if p.poll() is None:
                _killpg(p.pid)
                try:
                    p.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        for pid in self.pids():  # daemons (p2pd) and anything else started inside our namespace
            _signal(pid, signal.SIGTERM)
        deadline = time.time() + 5
        while self.pids() and time.time() < deadline:
            time.sleep(0.2)
        for pid in self.pids():
            _signal(pid, signal.SIGKILL)
        if self.created:
            for _ in range(10):
                if ip("netns", "del", self.name, check=False).returncode == 0:
                    self.created = False
                    break
                time.sleep(0.5)
            if self.created:
                log(f"WARNING: could not delete network namespace {self.name}; run: ip netns del {self.name}")


class Veth:
    """A veth pair from namespace a (address ip_a) to namespace b (ip_b), both ends up. down()/up() cut
    and heal it at b's end (a partition: b gets 'unreachable', a's packets vanish)."""

    def __init__(
        self,
        a: Namespace,
        b: Namespace,
        ip_a: str,
        ip_b: str,
        *,
        prefix_len: int = 24,
        dev_a: str | None = None,
        dev_b: str | None = None,
    ):
        self.ns = {"a": a, "b": b}
        self.addr = {"a": ip_a, "b": ip_b}
        self.dev = {"a": (dev_a or f"{a.name}v")[:15], "b": (dev_b or f"{b.name}v")[:15]}  # IFNAMSIZ - 1
        ip(
            "link",
            "add",
            self.dev["a"],
            "netns",
            a.name,
            "type",
            "veth",
            "peer",
            "name",
            self.dev["b"],
            "netns",
            b.name,
        )
        for side in "ab":
            self.ns[side].ip("addr", "add", f"{self.addr[side]}/{prefix_len}", "dev", self.dev[side])
            self.up(side)

    def down(self, side: str = "b") -> None:
        self.ns[side].ip("link", "set", self.dev[side], "down")

    def up(self, side: str = "b") -> None:
        self.ns[side].ip("link", "set", self.dev[side], "up")


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        _signal(pid, signal.SIGKILL)
