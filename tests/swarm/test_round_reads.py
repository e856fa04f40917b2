"""An empty round and an unreadable one (PROTOCOL §9): hivemind's get returns None for both, and a
peer that applied an unreadable round as empty would diverge. Real DHT nodes on loopback."""

from __future__ import annotations

import time

import pytest
from hivemind.utils import get_dht_time

from onebyte.dht.client import DHTUnavailable, RecordClient, start_dht
from onebyte.dht.identity import Identity
from onebyte.dht.records import ContributionRecord


def test_an_empty_round_reads_empty_and_an_unreadable_one_fails():
    """B knows only A. While A answers, a round nobody wrote reads as empty and a written one as its
    records; once A is gone, a round B holds nothing of is a read failure, not an empty round. A
    node that knows no other node left is the whole DHT: its own storage is the answer."""
    a_id, b_id = Identity(), Identity()
    a = start_dht(a_id)
    b = start_dht(b_id, [str(m) for m in a.get_visible_maddrs()])
    try:
        ca, cb = RecordClient(a, a_id, timeout=30), RecordClient(b, b_id, timeout=30)
        rec = ContributionRecord(round=3, published_at=time.time(), codes=b"\x41")
        assert ca.publish_contributions("reads", rec, get_dht_time() + 600)
        written = cb.read_round("reads", 3)
        empty = cb.read_round("reads", 4)
        a.shutdown()
        with pytest.raises(DHTUnavailable, match="answered"):
            cb.read_round("reads", 5)
        alone = cb.read_round("reads", 6)  # A left B's routing table when it failed to answer
    finally:
        b.shutdown()
        a.shutdown()
    assert list(written) == [a_id.peer_id] and written[a_id.peer_id].codes == b"\x41"
    assert empty == {}
    assert alone == {}
