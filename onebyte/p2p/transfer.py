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

Everything another peer answers is bounded and parsed strictly (docs/PROTOCOL.md §14, "Bounds"):
``.info`` through a strict schema (a wrong shape is that source failing, never a crash); streams
are read by our own reader, which refuses a message over ``MAX_MESSAGE_BYTES``, stops at the
bytes the request allows (a checkpoint: what the source advertised and what the model's size
allows; a log: ``MAX_LOG_BYTES``), and drops a source that sends nothing for ``IDLE_SECONDS``.
Sources are probed concurrently (``probe``), each within a deadline, so stalled ones (tarpits)
cost one deadline in all, not one each; the outcome of every call is remembered per source.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from hivemind.compression import deserialize_torch_tensor, serialize_torch_tensor
from hivemind.p2p import P2P, P2PContext, PeerID
from hivemind.proto import averaging_pb2, runtime_pb2
from hivemind.utils.multiaddr import Multiaddr
from hivemind.utils.streaming import combine_from_streaming, split_for_streaming
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from safetensors import safe_open

from onebyte.dht.wire import clip
from onebyte.p2p.serving import SERVE_RETRY_SECONDS, ServeBudget, busy_refusal

log = logging.getLogger("onebyte.transfer")

LOG_CHUNK_BYTES = 256 * 1024
MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # one stream message (ours: 64 KB tensor parts, 256 KB log chunks)
MAX_INFO_BYTES = 4096  # an .info answer (ours: ~200 bytes)
MAX_META_BYTES = 1024 * 1024  # a .state header: round, hash and the tensor names
MAX_LOG_LINE_BYTES = 1024 * 1024  # one seed-log entry (a round of ~10,000 records)
MAX_LOG_BYTES = 64 * 1024 * 1024  # one .log answer
MAX_SERVED_ROUNDS = 1000  # rounds one .log request is answered with
IDLE_SECONDS = 10.0  # a stream that sends nothing this long is dropped
STATE_SLACK_BYTES = 64 * 1024  # framing on top of the tensors' bytes
INFO_CACHE_SECONDS = 1.0  # an .info answer is recomputed at most this often


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class CheckpointOffer(_Strict):
    round: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(gt=0, le=2**48)


class InfoAnswer(_Strict):
    """A .info answer (§14): a contiguous log span first <= last, its contribution count, a checkpoint offer."""

    log: tuple[int, int] | None
    contributions: int = Field(ge=0, le=2**48)
    checkpoint: CheckpointOffer | None

    @model_validator(mode="after")
    def _span(self):
        if self.log is not None and not 0 <= self.log[0] <= self.log[1]:
            raise ValueError(f"log span {list(self.log)} is not first <= last, both >= 0")
        if self.log is None and self.contributions:
            raise ValueError("contributions without a log")
        return self


class StateHeader(_Strict):
    round: int = Field(ge=-1)  # -1: the run's initial weights
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    names: list[str] = Field(max_length=100_000)


class StateRequest(_Strict):
    """A .state request for the run's initial weights (round -1); an empty request asks for the newest checkpoint."""

    round: int = Field(ge=-1, le=-1)


class LogRequest(_Strict):
    first: int = Field(ge=0, le=2**48)
    last: int = Field(ge=0, le=2**48)


def parse_info(raw: bytes) -> dict:
    """A peer's .info answer as a plain dict ({"log": [a, b] | None, "contributions", "checkpoint"}),
    or ValueError: too long, not JSON, or any other shape than §14's."""
    if len(raw) > MAX_INFO_BYTES:
        raise ValueError(f"an .info answer of {len(raw)} bytes")
    try:
        info = InfoAnswer.model_validate_json(raw)
    except ValidationError as e:
        raise ValueError(
            f"malformed .info answer ({e.error_count()} error(s): {clip(e.errors()[0]['msg'], 120)})"
        ) from None
    return {
        "log": list(info.log) if info.log else None,
        "contributions": info.contributions,
        "checkpoint": info.checkpoint.model_dump() if info.checkpoint else None,
    }


class TransferError(RuntimeError):
    pass


@dataclass
class ServedState:
    """What a peer offers; callables so the server always reads the newest."""

    log_span: Callable[[], tuple[int, int] | None]
    log_lines: Callable[[int, int], list[bytes]]
    log_contributions: Callable[[int, int], int]
    checkpoint: Callable[[], tuple[Path, int, str] | None]  # (path, round, sha256) of the newest
    # (initial_sha256, {name: tensor}) of the run's initial trainable tensors, served as round -1 (§14)
    initial: Callable[[], tuple[str, dict[str, torch.Tensor]]] | None = None


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
        self.state_limit: tuple[int, int] | None = (
            None  # (tensor bytes, tensors) of this model: no checkpoint is larger
        )
        self.offers: dict[str, int] = {}  # p2p id -> checkpoint bytes it advertised in its last .info answer
        self.budget = ServeBudget()
        self.health: dict[str, list[float]] = {}  # p2p id -> [successes, failures, time of the last failure]

    def _note(self, p2p_id: str, ok: bool) -> None:
        h = self.health.setdefault(p2p_id, [0, 0, 0.0])
        if ok:
            h[0] += 1
        else:
            h[1], h[2] = h[1] + 1, time.time()
        if len(self.health) > 4096:  # bounded: forget the oldest entries
            for k in list(self.health)[:1024]:
                del self.health[k]

    def _call(self, coro, timeout: float | None = None):
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout=timeout or self.timeout)
        except TimeoutError:
            fut.cancel()
            raise TransferError(f"p2p call timed out after {timeout or self.timeout:.0f}s") from None

    # -- serving -----------------------------------------------------------------------------
    def serve(
        self,
        state: ServedState,
        on_served: Callable[[str, str], None] | None = None,
        info_cache_seconds: float = INFO_CACHE_SECONDS,
    ) -> None:
        """Answer .info, .log and .state within ``self.budget``; ``on_served(handler, outcome)`` counts each answer
        (outcome: "served" or "refused"). The .info answer is reused for ``info_cache_seconds``."""
        cached: list = [0.0, b""]  # (when, answer): an .info answer costs a pass over the log

        def count(handler: str, outcome: str) -> None:
            if on_served is not None:
                try:
                    on_served(handler, outcome)
                except Exception:  # noqa: BLE001 - counting never breaks serving
                    pass

        async def info(_req: averaging_pb2.DownloadData, _ctx: P2PContext) -> averaging_pb2.DownloadData:
            if time.monotonic() - cached[0] >= info_cache_seconds:
                span = state.log_span()
                ck = state.checkpoint()
                meta = {
                    "log": list(span) if span else None,
                    "contributions": state.log_contributions(*span) if span else 0,
                    "checkpoint": {"round": ck[1], "sha256": ck[2], "bytes": ck[0].stat().st_size} if ck else None,
                }
                cached[:] = [time.monotonic(), json.dumps(meta).encode()]
            count("info", "served")
            return averaging_pb2.DownloadData(metadata=cached[1])

        def budgeted(name: str, handler):
            """``handler``'s stream, or one busy message when the budget says no."""

            async def guarded(req: averaging_pb2.DownloadData, ctx: P2PContext):
                requester = ctx.remote_id.to_base58()
                why = self.budget.admit(requester)
                if why is not None:
                    count(name, "refused")
                    busy = {"busy": why, "retry_after": SERVE_RETRY_SECONDS}
                    yield averaging_pb2.DownloadData(metadata=json.dumps(busy).encode())
                    return
                try:
                    async for msg in handler(req, ctx):
                        yield msg
                    count(name, "served")
                finally:
                    self.budget.release(requester)

            return guarded

        async def log_handler(req: averaging_pb2.DownloadData, _ctx: P2PContext):
            try:
                want = LogRequest.model_validate_json(req.metadata[:256])
            except ValidationError:
                return  # a malformed request gets an empty answer, not a traceback in our log
            span = state.log_span()
            if span is None:
                return
            first = max(want.first, span[0])
            last = min(want.last, span[1], first + MAX_SERVED_ROUNDS - 1)  # never iterate an attacker's range
            chunk = b""
            for line in state.log_lines(first, last):
                if chunk and len(chunk) + len(line) > LOG_CHUNK_BYTES:
                    yield averaging_pb2.DownloadData(metadata=chunk)
                    chunk = b""
                chunk += line
            if chunk:
                yield averaging_pb2.DownloadData(metadata=chunk)

        def parts(names, tensor, meta: bytes):
            for name in names:
                for part in split_for_streaming(serialize_torch_tensor(tensor(name), runtime_pb2.CompressionType.NONE)):
                    yield averaging_pb2.DownloadData(tensor_part=part, metadata=meta)
                    meta = b""
            if meta:  # no tensors at all
                yield averaging_pb2.DownloadData(metadata=meta)

        async def state_handler(req: averaging_pb2.DownloadData, _ctx: P2PContext):
            if req.metadata:  # the initial weights (round -1), or nothing for a malformed request
                try:
                    StateRequest.model_validate_json(req.metadata[:256])
                except ValidationError:
                    return
                if state.initial is None:
                    return
                sha, tensors = await asyncio.to_thread(state.initial)
                names = sorted(tensors)
                meta = json.dumps({"round": -1, "sha256": sha, "names": names}).encode()
                for msg in parts(names, tensors.__getitem__, meta):
                    yield msg
                return
            ck = state.checkpoint()
            if ck is None:
                return
            path, round_, sha = ck
            with safe_open(str(path), "pt") as f:  # the open file survives an atomic replace
                names = sorted(f.keys())
                meta = json.dumps({"round": round_, "sha256": sha, "names": names}).encode()
                for msg in parts(names, f.get_tensor, meta):
                    yield msg

        async def register():
            await self.p2p.add_protobuf_handler(f"{self.prefix}.info", info, averaging_pb2.DownloadData)
            await self.p2p.add_protobuf_handler(
                f"{self.prefix}.log", budgeted("log", log_handler), averaging_pb2.DownloadData, stream_output=True
            )
            await self.p2p.add_protobuf_handler(
                f"{self.prefix}.state", budgeted("state", state_handler), averaging_pb2.DownloadData, stream_output=True
            )

        self._call(register())

    # -- fetching ----------------------------------------------------------------------------
    def connect(self, p2p_id: str, addrs: list[str]) -> None:
        """Tell our p2p daemon where a peer is (its heartbeat says): a joiner may not have met it yet."""
        if p2p_id in self._connected or not addrs:
            return
        self._guarded(self._connect(p2p_id, addrs), 10.0, f"connect to {p2p_id[:12]}")

    async def _connect(self, p2p_id: str, addrs: list[str]) -> None:
        if p2p_id in self._connected or not addrs:
            return
        await self.p2p._client.connect(PeerID.from_base58(p2p_id), [Multiaddr(a) for a in addrs])
        self._connected.add(p2p_id)

    async def _info(self, p2p_id: str) -> dict:
        resp = await self.p2p.call_protobuf_handler(
            PeerID.from_base58(p2p_id), f"{self.prefix}.info", averaging_pb2.DownloadData(), averaging_pb2.DownloadData
        )
        info = parse_info(resp.metadata)
        if info["checkpoint"]:
            self.offers[p2p_id] = info["checkpoint"]["bytes"]
        return info

    def info(self, p2p_id: str, timeout: float = 5.0) -> dict:
        return self._guarded(self._info(p2p_id), timeout, f"info from {p2p_id[:12]}", p2p_id)

    def probe(
        self, candidates: list[tuple[str, list[str]]], *, deadline: float = 5.0, concurrency: int = 16
    ) -> dict[str, dict | str]:
        """Dial and ask .info of every (p2p id, addrs) at once, at most ``concurrency`` at a time,
        each within ``deadline`` seconds (dial included): p2p id -> its parsed answer, or the
        reason it failed. Stalled sources cost one deadline in all, not one each."""

        async def one(sem: asyncio.Semaphore, p2p_id: str, addrs: list[str]):
            async with sem:
                try:
                    try:
                        await asyncio.wait_for(self._connect(p2p_id, addrs), deadline / 2)
                    except Exception:  # noqa: BLE001 - our daemon may still know a route (the DHT met it)
                        pass
                    info = await asyncio.wait_for(self._info(p2p_id), deadline / 2)
                    self._note(p2p_id, True)
                    return p2p_id, info
                except Exception as e:  # noqa: BLE001 - any failure is this source failing
                    self._note(p2p_id, False)
                    return p2p_id, f"{type(e).__name__}: {clip(e, 160) or 'timeout'}"

        async def go():
            sem = asyncio.Semaphore(concurrency)
            return dict(await asyncio.gather(*(one(sem, p, a) for p, a in candidates)))

        waves = -(-len(candidates) // max(1, concurrency))
        return self._call(go(), timeout=deadline * waves + 10.0)

    async def _stream(self, p2p_id: str, name: str, req: averaging_pb2.DownloadData, *, max_bytes: int, idle: float):
        """hivemind's protobuf stream protocol, read by our own bounded reader: every message is
        at most MAX_MESSAGE_BYTES, all of them together at most ``max_bytes`` (TransferError past
        that), and each must come within ``idle`` seconds."""
        _, reader, writer = await self.p2p.call_binary_stream_handler(PeerID.from_base58(p2p_id), name)
        try:
            async for msg in self._read_stream(p2p_id, reader, writer, req, max_bytes=max_bytes, idle=idle):
                yield msg
        except TimeoutError:  # (the same class as the whole call's timeout: say which it was)
            raise TransferError(f"peer {p2p_id[:12]} sent nothing for {idle:.0f}s") from None
        finally:
            writer.close()

    async def _read_stream(self, p2p_id, reader, writer, req, *, max_bytes: int, idle: float):
        """hivemind's framing (P2P.send_protobuf): a marker byte, an 8-byte big-endian length, the bytes."""
        await P2P.send_protobuf(req, writer)
        await P2P.send_protobuf(P2P.END_OF_STREAM, writer)
        total = 0
        while True:
            try:
                marker = await asyncio.wait_for(reader.readexactly(1), idle)
            except asyncio.IncompleteReadError:
                return  # the source closed the stream: done
            header = await asyncio.wait_for(reader.readexactly(P2P.HEADER_LEN), idle)
            length = int.from_bytes(header, P2P.BYTEORDER)
            if length > MAX_MESSAGE_BYTES:
                raise TransferError(
                    f"peer {p2p_id[:12]} sent a message of {length} bytes (at most {MAX_MESSAGE_BYTES})"
                )
            total += length
            if total > max_bytes:
                raise TransferError(f"peer {p2p_id[:12]} sent more than the {max_bytes} bytes this answer may have")
            data = await asyncio.wait_for(reader.readexactly(length), max(idle, length / 1e6))
            if marker == P2P.ERROR_MARKER:
                if length == 0:  # END_OF_STREAM
                    return
                raise TransferError(f"peer {p2p_id[:12]} answered with an error")
            if marker != P2P.MESSAGE_MARKER:
                raise TransferError(f"peer {p2p_id[:12]} broke the stream protocol")
            yield averaging_pb2.DownloadData.FromString(data)

    def fetch_log(self, p2p_id: str, first: int, last: int) -> list[bytes]:
        """Seed-log lines for rounds first..last (at most that many lines, each at most
        MAX_LOG_LINE_BYTES; the stream stops at MAX_LOG_BYTES)."""
        want = max(0, last - first + 1)

        async def go():
            req = averaging_pb2.DownloadData(metadata=json.dumps({"first": first, "last": last}).encode())
            lines: list[bytes] = []
            async for msg in self._stream(
                p2p_id, f"{self.prefix}.log", req, max_bytes=MAX_LOG_BYTES, idle=IDLE_SECONDS
            ):
                if not lines and (refused := busy_refusal(msg.metadata, p2p_id)):
                    raise TransferError(refused)
                for line in msg.metadata.split(b"\n"):
                    if not line:
                        continue
                    if len(line) > MAX_LOG_LINE_BYTES:
                        raise TransferError(f"peer {p2p_id[:12]} sent a log line of {len(line)} bytes")
                    lines.append(line + b"\n")
                if len(lines) >= want:
                    break  # it sent what was asked for; anything more is ignored
            return lines[:want]

        return self._guarded(go(), max(self.timeout, want * 0.05), f"log {first}..{last} from {p2p_id[:12]}", p2p_id)

    def fetch_state(
        self, p2p_id: str, timeout: float | None = None, *, initial: bool = False
    ) -> tuple[dict, dict[str, torch.Tensor]]:
        """(meta, tensors by name) of the peer's newest checkpoint, or with ``initial`` of the run's
        initial weights (round -1); the caller verifies the hash. The download stops at twice what
        the source advertised in its .info answer (bfloat16 travels as binary32) and at what this
        model's tensors can take (``state_limit``), whichever is less."""
        limit_bytes, limit_tensors = self.state_limit or (2**40, 10**6)
        # the advertised size is the file's: a bfloat16 checkpoint travels as binary32, twice that (§14)
        advertised = limit_bytes if initial else self.offers.get(p2p_id, limit_bytes)
        max_bytes = min(2 * advertised, limit_bytes) + STATE_SLACK_BYTES
        request = averaging_pb2.DownloadData(metadata=b'{"round": -1}' if initial else b"")

        async def go():
            meta, parts, tensors = None, [], []
            stream = self._stream(p2p_id, f"{self.prefix}.state", request, max_bytes=max_bytes, idle=IDLE_SECONDS)
            async for msg in stream:
                if msg.metadata:
                    if meta is None and (refused := busy_refusal(msg.metadata, p2p_id)):
                        raise TransferError(refused)
                    if meta is not None or len(msg.metadata) > MAX_META_BYTES:
                        raise TransferError(f"peer {p2p_id[:12]} sent a second or oversized checkpoint header")
                    try:
                        meta = StateHeader.model_validate_json(msg.metadata).model_dump()
                    except ValidationError as e:
                        raise TransferError(
                            f"peer {p2p_id[:12]} sent a malformed checkpoint header ({e.error_count()} error(s))"
                        ) from None
                    if len(meta["names"]) > limit_tensors:
                        raise TransferError(
                            f"peer {p2p_id[:12]} offers {len(meta['names'])} tensors, the model has {limit_tensors}"
                        )
                if msg.HasField("tensor_part"):
                    if msg.tensor_part.dtype and parts:  # hivemind marks a tensor's first part with its dtype
                        tensors.append(deserialize_torch_tensor(combine_from_streaming(parts)))
                        parts = []
                        if len(tensors) >= limit_tensors:
                            raise TransferError(f"peer {p2p_id[:12]} sent more tensors than the model has")
                    parts.append(msg.tensor_part)
            if parts:
                tensors.append(deserialize_torch_tensor(combine_from_streaming(parts)))
            return meta, tensors

        meta, tensors = self._guarded(go(), timeout, f"checkpoint from {p2p_id[:12]}", p2p_id)
        if meta is None:
            raise TransferError(f"peer {p2p_id[:12]} has no checkpoint to give")
        names = meta["names"]
        if len(names) != len(tensors) or len(set(names)) != len(names):
            raise TransferError(f"peer {p2p_id[:12]} sent {len(tensors)} tensors for {len(names)} names")
        return meta, dict(zip(names, tensors))

    def _guarded(self, coro, timeout, what: str, p2p_id: str | None = None):
        try:
            out = self._call(coro, timeout)
        except TransferError as e:
            if p2p_id:
                self._note(p2p_id, False)
            raise TransferError(clip(e, 300)) from None
        except Exception as e:  # noqa: BLE001 - any p2p or decoding failure is "this source failed"
            if p2p_id:
                self._note(p2p_id, False)
            raise TransferError(f"{what} failed: {type(e).__name__}: {clip(e, 200)}") from None
        if p2p_id:
            self._note(p2p_id, True)
        return out

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
