"""A hostile DHT client for tests: stores exactly the bytes it is told to, signed or not, by anyone.

onebyte's own RecordClient can only store well-formed values under its own subkey (its DHT
serializes the value and its validator signs only its owner's subkey). An attacker is not so
polite: this helper builds the raw hivemind record itself (key id, msgpack subkey, value bytes,
expiration) with whatever signature the test chose (none, a wrong one, another key's) and sends it
with hivemind's own ``call_store`` RPC to every node in its routing table, so each honest node's
validator sees it. Nothing here is mocked: the stores go over libp2p to real DHT nodes.
"""

from __future__ import annotations

import struct
from functools import partial

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hivemind.dht import DHT
from hivemind.dht.routing import DHTID
from hivemind.utils import MSGPackSerializer

from onebyte.dht.identity import Identity
from onebyte.dht.validator import owner_subkey

SER = MSGPackSerializer


def key_id_bytes(key: str) -> bytes:
    return DHTID.generate(source=key).to_bytes()


def signature_message(key: str, subkey: bytes, value: bytes, expiration: float) -> bytes:
    """What an onebyte record's Ed25519 signature covers (docs/PROTOCOL.md §9), built independently
    of onebyte.dht.validator so that a mistake there would show up here."""
    k, s = key_id_bytes(key), SER.dumps(subkey)
    return (
        b"onebyte/record/v1"
        + struct.pack("<I", len(k))
        + k
        + struct.pack("<I", len(s))
        + s
        + struct.pack("<d", expiration)
        + value
    )


def signed(identity: Identity, key: str, subkey: bytes, value: bytes, expiration: float) -> bytes:
    """``value`` (already msgpack or deliberately not) followed by ``identity``'s signature over it."""
    return value + identity.sign(signature_message(key, subkey, value, expiration))


def _known_peers(node, key_id: DHTID) -> list:
    """Every node this DHT node knows (up to 64), nearest to the key first: an attacker stores everywhere."""
    return [peer for _, peer in node.protocol.routing_table.get_nearest_neighbors(key_id, 64, exclude=node.node_id)]


async def _store_everywhere(
    key: str, subkey: bytes, value, expiration: float, signer: bytes | None, _dht, node
) -> list[bool]:
    """Runs inside the DHT process. ``value`` is the stored bytes, or ("codes", round, published_at, n):
    a v1 contribution record with n codes built here (hivemind's pipe to its DHT process refuses
    arguments over ~16 KB, an attacker's own client would not). ``signer``: raw Ed25519 private key
    bytes to sign with here (else ``value`` is stored exactly as given)."""
    if isinstance(value, tuple):
        _, round_, published_at, n = value
        value = SER.dumps([1, round_, published_at, b"\x7f" * n])
    if signer is not None:
        value = signed(Identity(Ed25519PrivateKey.from_private_bytes(signer)), key, subkey, value, expiration)
    key_id = DHTID.generate(source=key)
    out = []
    for peer in _known_peers(node, key_id):
        res = await node.protocol.call_store(peer, [key_id], [value], [expiration], subkeys=[subkey])
        out.append(bool(res and res[0]))
    return out


def store_many_raw(dht: DHT, key: str, items: list[tuple[bytes, bytes]], expiration: float, *, chunk: int = 50) -> int:
    """Store many (subkey, stored bytes) pairs under one key on every node this DHT node knows, ``chunk`` of
    them per store call (as a flooding client would; hivemind's pipe to its DHT process takes ~16 KB per
    call). Returns how many stores the nodes accepted."""
    accepted = 0
    for i in range(0, len(items), chunk):
        part = items[i : i + chunk]
        accepted += dht.run_coroutine(partial(_store_many, key, part, expiration), return_future=True).result(30)
    return accepted


async def _store_many(key: str, items: list[tuple[bytes, bytes]], expiration: float, _dht, node) -> int:
    key_id = DHTID.generate(source=key)
    accepted = 0
    for peer in _known_peers(node, key_id):
        values = [v for _, v in items]
        subkeys = [s for s, _ in items]
        res = await node.protocol.call_store(
            peer, [key_id] * len(items), values, [expiration] * len(items), subkeys=subkeys
        )
        accepted += sum(bool(x) for x in res or [])
    return accepted


def private_bytes(identity: Identity) -> bytes:
    return identity.private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def store_raw(
    dht: DHT,
    key: str,
    subkey: bytes,
    value,
    expiration: float,
    *,
    sign_with: Identity | None = None,
    timeout: float = 30.0,
) -> list[bool]:
    """Send the record (subkey, value bytes as stored: payload || signature, or anything) to every
    node this DHT node knows, signed by ``sign_with`` if given; ``subkey=None`` stores a plain value
    (no subkey). Returns each node's answer (True = it accepted and stored it)."""
    signer = private_bytes(sign_with) if sign_with is not None else None
    fut = dht.run_coroutine(partial(_store_everywhere, key, subkey, value, expiration, signer), return_future=True)
    return fut.result(timeout=timeout)


def known_nodes(dht: DHT) -> int:
    return dht.run_coroutine(_count_nodes, return_future=True).result(timeout=30)


async def _count_nodes(_dht, node) -> int:
    return len(node.protocol.routing_table.uid_to_peer_id)


def subkey_of(identity: Identity) -> bytes:
    return owner_subkey(identity.public_key)


async def _fetch_everywhere(key: str, _dht, node) -> list[tuple[bytes, bytes, float]]:
    key_id = DHTID.generate(source=key)
    peers = [peer for _, peer in node.protocol.routing_table.get_nearest_neighbors(key_id, 64, exclude=node.node_id)]
    out = {}
    for peer in peers:
        res = await node.protocol.call_find(peer, [key_id])
        found = res and res[key_id][0]
        if found is not None and hasattr(found.value, "items"):
            for subkey, (value_bytes, expiration) in found.value.items():
                out[(subkey, value_bytes)] = expiration
    return [(subkey, value, exp) for (subkey, value), exp in out.items()]


def fetch_raw(dht: DHT, key: str, timeout: float = 30.0) -> list[tuple[bytes, bytes, float]]:
    """Every (subkey, stored bytes with their signature, expiration) the known nodes hold under
    ``key``: what an eavesdropper or any DHT member can copy and replay."""
    return dht.run_coroutine(partial(_fetch_everywhere, key), return_future=True).result(timeout=timeout)
