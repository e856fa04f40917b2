"""Lean round I/O: store to and read from the r nearest known DHT nodes, with no crawl.

hivemind's ``store`` first crawls the DHT (every FIND reply carries the whole round dictionary)
and ``get(latest=True)`` crawls again: ~22-24 KB per peer per round at N = 8 (BENCHMARKS.md).
These coroutines run inside the DHT process (``dht.run_coroutine``) and talk only to the r nodes
nearest to the key in this node's routing table, itself included. They rely on routing tables
that agree about who is nearest, which the regular (crawling) heartbeat stores keep
fresh; a run opts in through its manifest (``lean_replicas``), and hash records catch a miss.
"""

from __future__ import annotations

from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord
from hivemind.utils import ValueWithExpiration

from onebyte.dht import wire


def _nearest(node, key_id: DHTID, replicas: int) -> list:
    cands = node.protocol.routing_table.get_nearest_neighbors(key_id, replicas, exclude=node.node_id) + [
        (node.node_id, None)
    ]
    return sorted(cands, key=lambda c: key_id.xor_distance(c[0]))[:replicas]


async def lean_store(key: str, subkey: bytes, value, expiration: float, replicas: int, _dht, node) -> int:
    """Store one signed subkey on the ``replicas`` nearest known nodes; returns how many accepted."""
    key_id = DHTID.generate(source=key)
    ser = node.protocol.serializer
    record = DHTRecord(key_id.to_bytes(), ser.dumps(subkey), ser.dumps(value), expiration)
    signed = node.protocol.record_validator.sign_value(record)
    ok = 0
    for _node_id, peer_id in _nearest(node, key_id, replicas):
        if peer_id is None:
            ok += bool(node.protocol.storage.store_subkey(key_id, subkey, signed, expiration))
        else:
            res = await node.protocol.call_store(peer_id, [key_id], [signed], [expiration], subkeys=[subkey])
            ok += bool(res and res[0])
    return ok


async def lean_read(key: str, replicas: int, _dht, node) -> tuple[dict, dict[str, int]]:
    """Merge the dictionary under ``key`` from the ``replicas`` nearest known nodes.

    Returns ({subkey: ValueWithExpiration(value)}, {reason: values dropped}) with signatures
    verified and stripped, as hivemind's get() would, every value decoded by onebyte.dht.wire
    (bounded; what fails is dropped and counted); raises ConnectionError if no node answered.
    """
    key_id = DHTID.generate(source=key)
    validator, ser = node.protocol.record_validator, node.protocol.serializer
    merged: dict = {}
    dropped: dict[str, int] = {}
    answered = 0
    for _node_id, peer_id in _nearest(node, key_id, replicas):
        if peer_id is None:
            found = node.protocol.storage.get(key_id)
        else:
            res = await node.protocol.call_find(peer_id, [key_id])  # validates every record it returns
            if res is None:
                continue
            found = res[key_id][0]
        answered += 1
        if found is None or not hasattr(found.value, "items"):
            continue
        for subkey, (value_bytes, expiration) in found.value.items():
            record = DHTRecord(key_id.to_bytes(), ser.dumps(subkey), value_bytes, expiration)
            if peer_id is None and validator is not None and not validator.validate(record):
                dropped["evicted"] = dropped.get("evicted", 0) + 1
                continue  # our own storage: check it too
            stripped = validator.strip_value(record) if validator is not None else value_bytes
            if subkey not in merged or merged[subkey].expiration_time < expiration:
                try:
                    merged[subkey] = ValueWithExpiration(wire.loads(stripped), expiration)
                except wire.WireError as e:
                    dropped[e.reason] = dropped.get(e.reason, 0) + 1
    if not answered:
        raise ConnectionError(f"none of the {replicas} nearest nodes answered for {key}")
    return merged, dropped
