"""The record layer over hivemind.DHT: publish and read onebyte's signed records.

All calls go through futures with timeouts (the DHT is a child process; a dead child must not
hang the peer) and return parsed, validated records plus counts of what was rejected.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import Sequence
from functools import partial
from typing import Any

from hivemind.dht import DHT
from hivemind.dht.routing import DHTID
from hivemind.dht.storage import DictionaryDHTValue
from hivemind.utils import ValueWithExpiration, get_dht_time

from onebyte.dht import records as R
from onebyte.dht import wire
from onebyte.dht.identity import SIGNATURE_BYTES, Identity
from onebyte.dht.lean import lean_read, lean_store
from onebyte.dht.validator import MAX_STORED_BYTES, Ed25519OwnerValidator, owner_subkey, subkey_owner

log = logging.getLogger("onebyte.dht")

DEFAULT_TIMEOUT = 10.0


class DHTUnavailable(RuntimeError):
    pass


def _die_with_parent(owner: int) -> None:
    """In the DHT child: when the peer process (pid ``owner``) dies, even by SIGKILL, stop p2pd and exit.

    hivemind runs the DHT in a forked child that owns a p2pd daemon; without this, a killed peer
    leaves both running as orphans on the volunteer's machine. Linux only (prctl); a no-op elsewhere.
    The parent is compared with the owner's pid, not with 1: in a container the peer itself is pid 1.
    """
    import ctypes
    import signal

    import psutil

    def stop(_signum, _frame):
        for child in psutil.Process().children(recursive=True):  # the p2p daemon
            try:
                child.kill()
            except psutil.Error:
                pass
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != owner:  # the parent died before prctl took effect
        stop(None, None)


class _PeerDHT(DHT):
    def __init__(self, *args, **kwargs):
        self._owner_pid = os.getpid()  # before super().__init__, which forks the child
        super().__init__(*args, **kwargs)

    def run(self) -> None:
        _die_with_parent(self._owner_pid)
        super().run()


def start_dht(
    identity: Identity,
    initial_peers: Sequence[str] = (),
    *,
    host_maddrs: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",),
    announce_maddrs: Sequence[str] | None = None,
    identity_path: str | None = None,
    client_mode: bool = False,
    num_replicas: int | None = None,
    use_relay: bool = True,
    use_auto_relay: bool = False,
) -> DHT:
    """Start a hivemind DHT node with onebyte's record validator.

    ``client_mode``: reach others but accept no incoming connections (a peer behind NAT);
    ``use_relay`` (hivemind's default): libp2p circuit relays may carry traffic to NATed peers;
    ``use_auto_relay``: behind NAT, look for relays among the peers to become reachable.
    """
    kwargs: dict[str, Any] = dict(host_maddrs=list(host_maddrs), client_mode=client_mode)
    if not use_relay:
        kwargs["use_relay"] = False
    if use_auto_relay:
        kwargs["use_auto_relay"] = True
    if announce_maddrs:
        kwargs["announce_maddrs"] = list(announce_maddrs)
    if identity_path:
        kwargs["identity_path"] = identity_path
    if num_replicas:
        kwargs["num_replicas"] = num_replicas
    return _PeerDHT(
        initial_peers=list(initial_peers) or None,
        start=True,
        record_validators=[Ed25519OwnerValidator(identity)],
        **kwargs,
    )


class RecordClient:
    """One peer's view of the DHT: its identity signs what it stores; everything read is checked."""

    def __init__(self, dht: DHT, identity: Identity, timeout: float = DEFAULT_TIMEOUT, lean_replicas: int = 0):
        self.dht = dht
        self.identity = identity
        self.subkey = owner_subkey(identity.public_key)
        self.timeout = timeout
        self.lean_replicas = lean_replicas  # > 0: round records go to/from that many nearest nodes, no crawl
        self.rejected: Counter[str] = Counter()

    def _run(self, coro):
        if not self.dht.is_alive():
            raise DHTUnavailable("the DHT process is not running")
        try:
            return self.dht.run_coroutine(coro, return_future=True).result(timeout=self.timeout)
        except (TimeoutError, ConnectionError) as e:
            raise DHTUnavailable(f"lean DHT call failed: {e or 'timeout'}") from None

    # -- low level ---------------------------------------------------------------------------
    def _store(self, key: str, value: Any, expiration: float) -> bool:
        if not self.dht.is_alive():
            raise DHTUnavailable("the DHT process is not running")
        try:
            return bool(
                self.dht.store(key, value, expiration, subkey=self.subkey, return_future=True).result(
                    timeout=self.timeout
                )
            )
        except TimeoutError:
            log.warning("store of %s timed out after %.1fs", key, self.timeout)
            return False

    def _get(self, key: str, latest: bool = True, confirm_empty: bool = False) -> Any:
        """hivemind's get, run in the DHT process with every value checked there (bounded depth and
        size, plain types) before it is pickled back: a value that cannot cross the pipe never
        makes the whole read time out. What is dropped is counted in ``rejected``.

        hivemind returns None both for a key no node holds and for one no node answered about;
        with ``confirm_empty`` (round records, PROTOCOL §9) nothing found is only an empty answer
        if a node this one knows near the key answered for it, and otherwise DHTUnavailable."""
        if not self.dht.is_alive():
            raise DHTUnavailable("the DHT process is not running")
        try:
            found, dropped = self.dht.run_coroutine(
                partial(_bounded_get, key, latest, confirm_empty), return_future=True
            ).result(timeout=self.timeout)
        except TimeoutError:
            raise DHTUnavailable(f"get of {key} timed out after {self.timeout:.1f}s") from None
        except Exception as e:  # noqa: BLE001 - whatever broke in the DHT process, this read failed, the peer goes on
            raise DHTUnavailable(f"get of {key} failed: {type(e).__name__}: {wire.clip(e)}") from None
        self.rejected.update(dropped)
        return found

    # -- contributions -----------------------------------------------------------------------
    def _store_round_data(self, key: str, value: Any, expiration: float) -> bool:
        """Per-round records (contributions, hashes) and heartbeats: lean when the run says so, else crawling."""
        if not self.lean_replicas:
            return self._store(key, value, expiration)
        try:
            return self._run(partial(lean_store, key, self.subkey, value, expiration, self.lean_replicas)) > 0
        except DHTUnavailable as e:
            log.warning("lean store of %s failed (%s)", key, e)
            return False

    def _read_round_data(self, key: str, confirm_empty: bool = False) -> Any:
        if not self.lean_replicas:
            return self._get(key, confirm_empty=confirm_empty)
        merged, dropped = self._run(partial(lean_read, key, self.lean_replicas))
        self.rejected.update(dropped)
        return merged

    def publish_contributions(self, run_id: str, rec: R.ContributionRecord, expiration: float) -> bool:
        return self._store_round_data(R.round_key(run_id, rec.round), rec.pack(), expiration)

    def read_round(self, run_id: str, round_: int) -> dict[str, R.ContributionRecord]:
        """All verified contribution records for a round, by peer id. Raises DHTUnavailable, also
        when no DHT node answered for the round (never an unreadable round read as an empty one)."""
        return R.parse_subkeys(
            self._read_round_data(R.round_key(run_id, round_), confirm_empty=True),
            R.ContributionRecord.unpack,
            self.rejected,
        )

    def read_rounds(self, run_id: str, rounds: list[int]) -> dict[int, dict[str, R.ContributionRecord]]:
        """``read_round`` of many rounds at once: one call into the DHT process, the gets concurrent
        there (a catch-up checks a batch of log entries in the time of one read). Raises
        DHTUnavailable if any of them cannot be read."""
        if self.lean_replicas or len(rounds) <= 1:
            return {r: self.read_round(run_id, r) for r in rounds}
        if len(rounds) > READ_MANY:
            return {
                k: v
                for i in range(0, len(rounds), READ_MANY)
                for k, v in self.read_rounds(run_id, rounds[i : i + READ_MANY]).items()
            }
        if not self.dht.is_alive():
            raise DHTUnavailable("the DHT process is not running")
        keys = [R.round_key(run_id, r) for r in rounds]
        try:
            answers = self.dht.run_coroutine(partial(_bounded_get_many, keys), return_future=True).result(
                timeout=self.timeout * 2
            )
        except TimeoutError:
            raise DHTUnavailable(f"get of {len(keys)} rounds timed out after {2 * self.timeout:.1f}s") from None
        except Exception as e:  # noqa: BLE001 - whatever broke in the DHT process, this read failed, the peer goes on
            raise DHTUnavailable(f"get of {len(keys)} rounds failed: {type(e).__name__}: {wire.clip(e)}") from None
        out = {}
        for r, (found, dropped) in zip(rounds, answers):
            self.rejected.update(dropped)
            out[r] = R.parse_subkeys(found, R.ContributionRecord.unpack, self.rejected)
        return out

    # -- hashes ------------------------------------------------------------------------------
    def publish_hash(self, run_id: str, rec: R.HashRecord, expiration: float) -> bool:
        return self._store_round_data(R.hash_key(run_id, rec.round), rec.model_dump(), expiration)

    def read_hashes(self, run_id: str, round_: int) -> dict[str, R.HashRecord]:
        return R.parse_subkeys(
            self._read_round_data(R.hash_key(run_id, round_)), lambda v: R.HashRecord(**v), self.rejected
        )

    # -- membership, manifest, run list ------------------------------------------------------
    def publish_heartbeat(self, run_id: str, hb: R.Heartbeat, ttl: float) -> bool:
        return self._store_round_data(R.peers_key(run_id), hb.model_dump(), get_dht_time() + ttl)

    def read_peers(self, run_id: str) -> dict[str, R.Heartbeat]:
        return R.parse_subkeys(self._read_round_data(R.peers_key(run_id)), lambda v: R.Heartbeat(**v), self.rejected)

    def publish_manifest(self, run_id: str, manifest: dict, expiration: float) -> bool:
        return self._store(R.manifest_key(run_id), manifest, expiration)

    def read_manifests(self, run_id: str, parse) -> dict[str, Any]:
        return R.parse_subkeys(self._get(R.manifest_key(run_id)), parse, self.rejected)

    def announce_run(self, ann: R.RunAnnouncement, ttl: float) -> bool:
        return self._store(R.RUNS_KEY, ann.model_dump(), get_dht_time() + ttl)

    def read_runs(self) -> dict[str, R.RunAnnouncement]:
        return R.parse_subkeys(self._get(R.RUNS_KEY), lambda v: R.RunAnnouncement(**v), self.rejected)

    def routing_peers(self) -> set[str]:
        """libp2p ids (base58) of the DHT nodes in this node's routing table: peers that answered
        DHT calls, unlike an address in a heartbeat, which anyone can write."""
        try:
            return self.dht.run_coroutine(_routing_peers, return_future=True).result(timeout=self.timeout)
        except Exception:  # noqa: BLE001 - a preference only
            return set()

    def validator_rejections(self) -> Counter:
        """What this peer's DHT node refused to store or accept (forged or unsigned records)."""
        try:
            return self.dht.run_coroutine(_validator_counts, return_future=True).result(timeout=self.timeout)
        except Exception:  # noqa: BLE001 - metrics only
            log.debug("could not read the validator's counts", exc_info=True)
            return Counter()


MAX_SUBKEY_BYTES = 64  # an ob1 subkey is 35 bytes


def _evict_invalid(node, key_id, dropped: dict[str, int]) -> None:
    """Runs inside the DHT process: drop from this node's own storage and cache every entry under
    ``key_id`` whose subkey is not an onebyte subkey or whose value does not pass today's bounds
    (onebyte.dht.wire). What arrives from other nodes is validated by hivemind, but an entry stored
    before this node had these bounds would reach hivemind's own decoder on every get (a registered
    extension type with bad data leaves the get hanging). Signatures were checked when the entry
    was stored; only the bounded decode runs here (no Ed25519 per read)."""
    for store in (node.protocol.storage, node.protocol.cache):
        found = store.get(key_id)
        if found is None:
            continue
        value = found.value
        if not isinstance(value, DictionaryDHTValue):  # onebyte stores no plain values (§9)
            del store[key_id]
            dropped["evicted"] = dropped.get("evicted", 0) + 1
            continue
        with value.freeze():
            entries = list(value.items())
        for subkey, (value_bytes, _expiration) in entries:
            ok = (
                subkey_owner(subkey) is not None
                and isinstance(value_bytes, bytes)
                and len(value_bytes) > SIGNATURE_BYTES
            )
            if ok:
                try:
                    wire.loads(value_bytes[:-SIGNATURE_BYTES], max_bytes=MAX_STORED_BYTES)
                except wire.WireError:
                    ok = False
            if not ok:
                del value[subkey]
                dropped["evicted"] = dropped.get("evicted", 0) + 1


async def _confirm_empty(node, key_id: DHTID, nearest: list) -> None:
    """Runs inside the DHT process after a get found nothing: ask the nodes that were nearest to the
    key before the get (those a writer stores to) directly; nothing found is an empty answer only
    if one of them answered, or if this node knew no other node (it is the whole DHT). Otherwise
    raises ConnectionError: the key could not be read (PROTOCOL §9)."""
    if not nearest:
        return
    answers = await asyncio.gather(*(node.protocol.call_find(peer_id, [key_id]) for _, peer_id in nearest))
    if not any(a is not None for a in answers):
        raise ConnectionError(f"none of the {len(nearest)} DHT node(s) nearest to the key answered")


async def _bounded_get(key: str, latest: bool, confirm_empty: bool, _dht, node) -> tuple[Any, dict[str, int]]:
    """Runs inside the DHT process: hivemind's get, then only plain, bounded values go back
    (onebyte.dht.wire.check_object, an iterative walk); the rest is dropped and counted."""
    dropped: dict[str, int] = {}
    key_id = DHTID.generate(source=key)
    _evict_invalid(node, key_id, dropped)
    # taken before the get: a node that fails to answer during it leaves the routing table
    nearest = node.protocol.routing_table.get_nearest_neighbors(key_id, node.num_replicas, exclude=node.node_id)
    found = await node.get(key, latest=latest)
    if found is None:
        if confirm_empty:
            await _confirm_empty(node, key_id, nearest)
        return None, dropped
    value = found.value
    if not isinstance(value, dict):
        try:
            wire.check_object(value)
        except wire.WireError as e:
            dropped[e.reason] = 1
            return None, dropped
        return ValueWithExpiration(value, found.expiration_time), dropped
    out = {}
    for subkey, item in value.items():
        payload = getattr(item, "value", None)
        try:
            if not isinstance(subkey, (bytes, str)) or len(subkey) > MAX_SUBKEY_BYTES:
                raise wire.WireError("foreign_subkey")
            wire.check_object(payload)
        except wire.WireError as e:
            dropped[e.reason] = dropped.get(e.reason, 0) + 1
            continue
        out[subkey] = ValueWithExpiration(payload, float(item.expiration_time))
    return ValueWithExpiration(out, found.expiration_time), dropped


READ_MANY = 32  # concurrent gets per call of read_rounds


async def _bounded_get_many(keys: list[str], _dht, node) -> list[tuple[Any, dict[str, int]]]:
    """``_bounded_get`` (latest, confirming empty answers) of several keys, concurrently."""
    return list(await asyncio.gather(*(_bounded_get(k, True, True, _dht, node) for k in keys)))


async def _routing_peers(_dht, node) -> set[str]:
    return {peer.to_base58() for peer in node.protocol.routing_table.uid_to_peer_id.values()}


async def _validator_counts(_dht, node) -> Counter:
    """Runs inside the DHT process (module level: it is pickled through the DHT's pipe)."""
    counts: Counter = Counter()
    validator = node.protocol.record_validator
    for v in getattr(validator, "_validators", [validator]):
        counts.update(getattr(v, "rejected", {}))
    return counts
