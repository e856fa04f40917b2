"""Storage is bounded by every DHT node's validator (docs/PROTOCOL.md §9): two real hivemind DHT
nodes on loopback, one honest, one storing raw signed records at it (tests/adversaries/hostile_client.py)."""

from __future__ import annotations

import time

import pytest
from hivemind.utils import get_dht_time

from onebyte.dht.client import RecordClient, start_dht
from onebyte.dht.identity import Identity
from onebyte.dht.records import round_key
from onebyte.dht.validator import MAX_EXPIRATION_AHEAD, MAX_STORED_BYTES, MAX_VALUE_BYTES
from tests.adversaries.hostile_client import SER, fetch_raw, known_nodes, store_raw, subkey_of


@pytest.fixture(scope="module")
def nodes():
    honest_id = Identity()
    honest = start_dht(honest_id)
    other = start_dht(Identity(), [str(a) for a in honest.get_visible_maddrs()])
    deadline = time.time() + 30
    while known_nodes(other) < 1 and time.time() < deadline:
        time.sleep(0.2)
    yield RecordClient(honest, honest_id), other
    other.shutdown()
    honest.shutdown()


def record(n_codes: int) -> bytes:
    return SER.dumps([1, 7, time.time(), b"\x01" * n_codes])


def test_values_larger_than_any_reader_accepts_are_refused(nodes):
    honest, other = nodes
    key = round_key("bounds", 7)
    exp = get_dht_time() + 600
    fits, too_big = Identity(), Identity()
    assert len(record(MAX_VALUE_BYTES)) <= MAX_STORED_BYTES  # the largest payload a reader parses is storable
    assert store_raw(other, key, subkey_of(fits), record(MAX_VALUE_BYTES), exp, sign_with=fits) == [True]
    before = honest.validator_rejections().get("oversized", 0)
    assert store_raw(
        other, key, subkey_of(too_big), ("codes", 7, time.time(), MAX_STORED_BYTES + 1), exp, sign_with=too_big
    ) == [False]
    assert honest.validator_rejections().get("oversized", 0) == before + 1
    stored = {sk for sk, _, _ in fetch_raw(other, key)}
    assert subkey_of(fits) in stored and subkey_of(too_big) not in stored


@pytest.mark.parametrize(
    "ahead, accepted",
    [(30 * 86400.0, True), (MAX_EXPIRATION_AHEAD + 3600, False), (365 * 86400.0, False)],
    ids=["manifest_lifetime", "just_past_the_cap", "a_year"],
)
def test_expirations_further_ahead_than_any_record_needs_are_refused(nodes, ahead, accepted):
    honest, other = nodes
    who = Identity()
    before = honest.validator_rejections().get("expiration_too_far", 0)
    key = round_key("bounds", 8)
    assert store_raw(other, key, subkey_of(who), record(1), get_dht_time() + ahead, sign_with=who) == [accepted]
    assert honest.validator_rejections().get("expiration_too_far", 0) == before + (0 if accepted else 1)
