"""`onebyte peer` as a thread of the test process, for swarm tests where the process boundary is not
what they check.

A peer process spends about 11 CPU-seconds importing torch, transformers and hivemind before it
does anything; a thread of the test process finds them imported. Everything else is the real peer:
the command line's parser and settings, ``run_peer``, its own DHT node (a child process) and p2p
daemon, its own checkpoint folder, report and round log. Tests that kill a peer, read its memory,
wrap it in a namespace or run a hostile program keep real processes (``Swarm(in_process=False)``).

The handle answers like ``subprocess.Popen`` (poll, wait, terminate, send_signal), and the peer's
log lines go to its own file, as a process's stderr would.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import traceback
from pathlib import Path

from onebyte.cli import build_parser
from onebyte.cli.config import apply_config
from onebyte.cli.swarm import peer_config, peer_summary
from onebyte.errors import USER_ERRORS
from onebyte.peer.node import Node
from onebyte.peer.swarm import run_peer
from onebyte.tasks.pretrained import warm_imports

_ready = threading.Lock()
_imported = False


def _import_once() -> None:
    """transformers resolves its names lazily, and two threads resolving one at once can fail; a process
    imports them once in its one thread, so the test process does it before its first peer thread."""
    global _imported
    with _ready:
        if not _imported:
            import transformers

            warm_imports()
            for name in (
                "AutoConfig",
                "AutoTokenizer",
                "AutoModelForCausalLM",
                "AutoModelForSequenceClassification",
                "GPT2Config",
                "LlamaConfig",
                "PreTrainedTokenizerBase",
            ):
                getattr(transformers, name)
            _imported = True


FORMAT = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
STOP_SECONDS = 120.0  # a stopped peer finishes its step and votes; past this its thread is left to end alone


class PeerThread:
    def __init__(self, name: str, argv: list[str], log_path: Path):
        _import_once()
        self.args = argv
        self.returncode: int | None = None
        self.pid = os.getpid()  # not a process of its own: a test that needs one uses Swarm(in_process=False)
        self._out = open(log_path, "w", buffering=1)
        self._thread = threading.Thread(target=self._main, name=f"peer-{name}-{id(self)}", daemon=True)
        self._handler = logging.StreamHandler(self._out)
        self._handler.setFormatter(FORMAT)
        self._handler.addFilter(lambda record: record.threadName == self._thread.name)
        onebyte_log = logging.getLogger("onebyte")
        onebyte_log.setLevel(logging.INFO)
        onebyte_log.addHandler(self._handler)
        # The peer's DHT node is a process forked from this one, made here in the test's own thread: a fork
        # from a peer thread while this thread is inside subprocess.Popen (an attacker, a faulty peer) would
        # inherit Popen's error pipe and leave Popen waiting on it for as long as that DHT node lives.
        self.node = None
        try:
            parser = build_parser()
            apply_config(parser, argv, os.environ)
            self.cfg = peer_config(parser.parse_args(argv))
            self.node = Node(self.cfg)
        except (*USER_ERRORS, SystemExit) as e:
            self._end(2, f"onebyte peer: error: {e}\n")
            return
        self._thread.start()

    def _main(self) -> None:
        try:
            self._end(0, peer_summary(run_peer(self.cfg, node=self.node)) + "\n")
        except USER_ERRORS as e:
            self._end(2, f"onebyte peer: error: {e}\n")
        except KeyboardInterrupt:
            self._end(130, "onebyte peer: interrupted\n")
        except BaseException:  # noqa: BLE001 - what a process would print before dying
            self._end(1, traceback.format_exc())

    def _end(self, code: int, last: str) -> None:
        self._out.write(last)
        logging.getLogger("onebyte").removeHandler(self._handler)
        self._out.close()
        self.returncode = code

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self._thread.is_alive():
            self._thread.join(STOP_SECONDS if timeout is None else timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(self.args, timeout or STOP_SECONDS)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if sig not in (signal.SIGINT, signal.SIGTERM):
            raise ValueError(f"a peer thread can only be asked to stop, not sent signal {sig}: use a process")
        self.terminate()

    def terminate(self) -> None:
        if self.node is not None:
            self.node.stop.set()

    def kill(self) -> None:
        """A thread cannot be killed: it is asked to stop, and a daemon thread ends with the test process."""
        self.terminate()
