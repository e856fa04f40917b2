"""Network namespaces for fault tests: two halves joined by a veth pair the test creates, cuts
(a partition), heals and removes. Needs root and iproute2; traffic only ever flows between the
two namespaces (10.231.x.0/24 addresses that exist nowhere else), never off the machine.

NetSwarm has the interface of tests/support/swarm.Swarm, with a bootstrap node and peers living in
the namespaces and listening on their namespace's address.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.support.swarm import ROOT, Swarm


class NetnsUnavailable(RuntimeError):
    pass


class NetnsPair:
    """Namespaces ``<prefix>a`` (10.231.N.1) and ``<prefix>b`` (10.231.N.2) linked by one veth pair."""

    def __init__(self, tag: str | None = None):
        n = os.getpid() % 250 + 1
        self.tag = tag or f"ob6f{os.getpid()}"
        self.ns = {"a": f"{self.tag}a", "b": f"{self.tag}b"}
        self.dev = {"a": f"{self.tag}va"[:15], "b": f"{self.tag}vb"[:15]}
        self.ip = {"a": f"10.231.{n}.1", "b": f"10.231.{n}.2"}
        self.created: list[str] = []

    def _ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
        if check and r.returncode != 0:
            raise NetnsUnavailable(f"ip {' '.join(args)}: {r.stderr.strip() or r.returncode}")
        return r

    def create(self) -> NetnsPair:
        try:
            for side in "ab":
                self._ip("netns", "add", self.ns[side])
                self.created.append(self.ns[side])
            self._ip(
                "link",
                "add",
                self.dev["a"],
                "netns",
                self.ns["a"],
                "type",
                "veth",
                "peer",
                "name",
                self.dev["b"],
                "netns",
                self.ns["b"],
            )
            for side in "ab":
                self._ip("-n", self.ns[side], "addr", "add", f"{self.ip[side]}/24", "dev", self.dev[side])
                self._ip("-n", self.ns[side], "link", "set", "lo", "up")
                self._ip("-n", self.ns[side], "link", "set", self.dev[side], "up")
        except (NetnsUnavailable, FileNotFoundError, subprocess.TimeoutExpired) as e:
            self.close()
            raise NetnsUnavailable(str(e)) from None
        return self

    def prefix(self, side: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns[side]]

    def partition(self) -> None:
        """Cut the link: b's end goes down, so b gets 'unreachable' and a's packets vanish."""
        self._ip("-n", self.ns["b"], "link", "set", self.dev["b"], "down")

    def heal(self) -> None:
        self._ip("-n", self.ns["b"], "link", "set", self.dev["b"], "up")

    def reachable(self, src: str, port: int) -> bool:
        """Can a process in ``src`` open a TCP connection to the other side's address (any answer counts)?"""
        dst = self.ip["b" if src == "a" else "a"]
        code = (
            f"import socket,sys\ns=socket.socket();s.settimeout(2)\n"
            f"try:\n s.connect(('{dst}',{port}))\nexcept ConnectionRefusedError:\n sys.exit(0)\nexcept "
            "OSError:\n sys.exit(1)\nsys.exit(0)"
        )
        return subprocess.run([*self.prefix(src), sys.executable, "-c", code], timeout=30).returncode == 0

    def close(self) -> None:
        for ns in reversed(self.created):  # deleting a namespace deletes the veth end in it, and so the pair
            for _ in range(10):
                if self._ip("netns", "del", ns, check=False).returncode == 0:
                    break
                time.sleep(0.5)
        self.created.clear()

    def __enter__(self) -> NetnsPair:
        return self.create()

    def __exit__(self, *exc) -> None:
        self.close()


class NetSwarm(Swarm):
    """A Swarm whose bootstrap node lives in namespace ``boot_side`` and whose peers live in the side they are given."""

    def __init__(self, workdir: Path, net: NetnsPair, boot_side: str = "a"):
        self.workdir, self.net = workdir, net
        self.procs: dict[str, subprocess.Popen] = {}
        log = open(workdir / "bootstrap.log", "w")
        self.boot = subprocess.Popen(
            [
                *net.prefix(boot_side),
                sys.executable,
                "-m",
                "onebyte.cli",
                "bootstrap",
                "--host-maddrs",
                f"/ip4/{net.ip[boot_side]}/tcp/0",
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=ROOT,
        )
        self.maddrs = []
        deadline = time.time() + 90
        while time.time() < deadline and not self.maddrs:
            line = self.boot.stdout.readline()
            if not line and self.boot.poll() is not None:
                raise RuntimeError("bootstrap node exited: " + (workdir / "bootstrap.log").read_text()[-2000:])
            if re.match(r"^/ip4/\S+/p2p/\S+$", line.strip()):
                self.maddrs.append(line.strip())
        if not self.maddrs:
            self.boot.kill()
            raise RuntimeError("bootstrap node printed no address")

    def peer(
        self, name: str, *args: str, side: str = "a", launcher: tuple[str, ...] = ("-m", "onebyte.cli")
    ) -> subprocess.Popen:
        return super().peer(
            name,
            "--host-maddrs",
            f"/ip4/{self.net.ip[side]}/tcp/0",
            *args,
            launcher=launcher,
            prefix=tuple(self.net.prefix(side)),
        )
