"""Peer-to-peer catch-up over hivemind's p2p layer: a peer's seed log and its latest checkpoint.

This reuses hivemind's state transfer (hivemind.averaging's ``rpc_download_state``): the same
protobuf messages (``averaging_pb2.DownloadData``: metadata bytes plus a tensor part), tensors
serialized with ``serialize_torch_tensor`` (no compression: the bits must survive) and split into
chunks with ``split_for_streaming``, over protobuf stream handlers on the DHT's own libp2p daemon
(``dht.replicate_p2p()``), so no new transport and no extra port. Three handlers per run
(docs/PROTOCOL.md §14):

    <prefix>.info   -> one message, metadata = JSON {"log": [first, last] | null, "contributions": n,
                       "checkpoint": {"round", "sha256", "bytes"} | null}
    <prefix>.log    request metadata JSON {"first", "last"} -> messages whose metadata are
                    seed-log lines (onebyte.coordinator_free.seedlog), in round order
    <prefix>.state  -> first message metadata = JSON {"round", "sha256", "names"}, then the tensors
                    in that order, each as one or more tensor parts

The handlers run on an asyncio loop in a daemon thread of the peer process; they read only
immutable things (checkpoint files, which are replaced atomically, and log lines).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from hivemind.compression import deserialize_torch_tensor, serialize_torch_tensor
from hivemind.p2p import P2PContext, PeerID
from hivemind.proto import averaging_pb2, runtime_pb2
from hivemind.utils.streaming import combine_from_streaming, split_for_streaming
from hivemind.utils.multiaddr import Multiaddr
from safetensors import safe_open

log = logging.getLogger("onebyte.transfer")

LOG_CHUNK_BYTES = 256 * 1024


class TransferError(RuntimeError):
    pass


@dataclass
class ServedState:
    """What a peer offers; callables so the server always reads the newest."""

    log_span: Callable[[], tuple[int, int] | None]
    log_lines: Callable[[int, int], list[bytes]]
    log_contributions: Callable[[int, int], int]
    checkpoint: Callable[[], tuple[Path, int, str] | None]  # (path, round, sha256) of the newest


def handler_prefix(run_id: str) -> str:
    return f"onebyte.{run_id}"


class Transfer:
    """Serve this peer's log and checkpoint, and fetch other peers'."""

    def __init__(self, dht, run_id: str, timeout: float = 30.0):
        self.prefix = handler_prefix(run_id)
        self.timeout = timeout
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="onebyte-transfer", daemon=True)
        self._thread.start()
        self.p2p = self._call(dht.replicate_p2p(), timeout=30.0)
        self.p2p_id = self.p2p.peer_id.to_base58()
        # where others can dial us: what the DHT announces, minus the /p2p/<id> suffix
        self.addrs = [str(a).split("/p2p/")[0] for a in dht.get_visible_maddrs()][:4]
        self._connected: set[str] = set()

    def _call(self, coro, timeout: float | None = None):
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout=timeout or self.timeout)
        except TimeoutError:
            fut.cancel()
            raise TransferError(f"p2p call timed out after {timeout or self.timeout:.0f}s") from None

    # -- serving -----------------------------------------------------------------------------
    def serve(self, state: ServedState) -> None:
        async def info(_req: averaging_pb2.DownloadData, _ctx: P2PContext) -> averaging_pb2.DownloadData:
            span = state.log_span()
            ck = state.checkpoint()
            meta = {"log": list(span) if span else None, "contributions": state.log_contributions(*span) if span else 0,
                    "checkpoint": {"round": ck[1], "sha256": ck[2], "bytes": ck[0].stat().st_size} if ck else None}
            return averaging_pb2.DownloadData(metadata=json.dumps(meta).encode())

        async def log_handler(req: averaging_pb2.DownloadData, _ctx: P2PContext):
            want = json.loads(req.metadata)
            chunk = b""
            for line in state.log_lines(int(want["first"]), int(want["last"])):
                if chunk and len(chunk) + len(line) > LOG_CHUNK_BYTES:
                    yield averaging_pb2.DownloadData(metadata=chunk)
                    chunk = b""
                chunk += line
            if chunk:
                yield averaging_pb2.DownloadData(metadata=chunk)

        async def state_handler(_req: averaging_pb2.DownloadData, _ctx: P2PContext):
            ck = state.checkpoint()
            if ck is None:
                return
            path, round_, sha = ck
            with safe_open(str(path), "pt") as f:  # the open file survives an atomic replace
                names = sorted(f.keys())
                meta = json.dumps({"round": round_, "sha256": sha, "names": names}).encode()
                for name in names:
                    tensor = f.get_tensor(name)
                    for part in split_for_streaming(serialize_torch_tensor(tensor, runtime_pb2.CompressionType.NONE)):
                        yield averaging_pb2.DownloadData(tensor_part=part, metadata=meta)
                        meta = b""
            if meta:  # no tensors at all
                yield averaging_pb2.DownloadData(metadata=meta)

        async def register():
            await self.p2p.add_protobuf_handler(f"{self.prefix}.info", info, averaging_pb2.DownloadData)
            await self.p2p.add_protobuf_handler(f"{self.prefix}.log", log_handler, averaging_pb2.DownloadData, stream_output=True)
            await self.p2p.add_protobuf_handler(f"{self.prefix}.state", state_handler, averaging_pb2.DownloadData, stream_output=True)

        self._call(register())

    # -- fetching ----------------------------------------------------------------------------
    def connect(self, p2p_id: str, addrs: list[str]) -> None:
        """Tell our p2p daemon where a peer is (its heartbeat says): a joiner may not have met it yet."""
        if p2p_id in self._connected or not addrs:
            return

        async def go():
            await self.p2p._client.connect(PeerID.from_base58(p2p_id), [Multiaddr(a) for a in addrs])

        self._guarded(go(), 10.0, f"connect to {p2p_id[:12]}")
        self._connected.add(p2p_id)

    def info(self, p2p_id: str, timeout: float = 5.0) -> dict:
        async def go():
            resp = await self.p2p.call_protobuf_handler(PeerID.from_base58(p2p_id), f"{self.prefix}.info",
                                                        averaging_pb2.DownloadData(), averaging_pb2.DownloadData)
            return json.loads(resp.metadata)

        return self._guarded(go(), timeout, f"info from {p2p_id[:12]}")

    def fetch_log(self, p2p_id: str, first: int, last: int) -> list[bytes]:
        async def go():
            req = averaging_pb2.DownloadData(metadata=json.dumps({"first": first, "last": last}).encode())
            lines: list[bytes] = []
            async for msg in await self.p2p.iterate_protobuf_handler(PeerID.from_base58(p2p_id), f"{self.prefix}.log", req, averaging_pb2.DownloadData):
                lines.extend(line + b"\n" for line in msg.metadata.split(b"\n") if line)
            return lines

        return self._guarded(go(), None, f"log {first}..{last} from {p2p_id[:12]}")

    def fetch_state(self, p2p_id: str, timeout: float | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
        """(meta, tensors by name) of the peer's newest checkpoint; the caller verifies the hash."""

        async def go():
            meta, parts, tensors = None, [], []
            stream = await self.p2p.iterate_protobuf_handler(PeerID.from_base58(p2p_id), f"{self.prefix}.state",
                                                             averaging_pb2.DownloadData(), averaging_pb2.DownloadData)
            async for msg in stream:
                if msg.metadata:
                    meta = json.loads(msg.metadata)
                if msg.HasField("tensor_part"):
                    if msg.tensor_part.dtype and parts:  # hivemind marks a tensor's first part with its dtype
                        tensors.append(deserialize_torch_tensor(combine_from_streaming(parts)))
                        parts = []
                    parts.append(msg.tensor_part)
            if parts:
                tensors.append(deserialize_torch_tensor(combine_from_streaming(parts)))
            return meta, tensors

        meta, tensors = self._guarded(go(), timeout, f"checkpoint from {p2p_id[:12]}")
        if meta is None:
            raise TransferError(f"peer {p2p_id[:12]} has no checkpoint to give")
        names = meta.get("names", [])
        if len(names) != len(tensors):
            raise TransferError(f"peer {p2p_id[:12]} sent {len(tensors)} tensors for {len(names)} names")
        return meta, dict(zip(names, tensors))

    def _guarded(self, coro, timeout, what: str):
        try:
            return self._call(coro, timeout)
        except TransferError:
            raise
        except Exception as e:  # noqa: BLE001 - any p2p or decoding failure is "this source failed"
            raise TransferError(f"{what} failed: {type(e).__name__}: {e}") from None

    def close(self) -> None:
        async def shutdown():
            try:
                await self.p2p.shutdown()
            except Exception:  # noqa: BLE001
                pass

        try:
            self._call(shutdown(), timeout=5.0)
        except Exception:  # noqa: BLE001
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
