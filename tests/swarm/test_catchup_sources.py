"""What a catch-up takes from a source (PROTOCOL §14): its log entries only if the DHT holds their
records, and the run's initial weights (round -1) only if they hash to the manifest's. Real DHT
nodes and p2p transfer on loopback, a real tiny replica; the source serves what the test gives it."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from hivemind.utils import get_dht_time

from onebyte.coordinator_free.agreement import V1_RULE, decide_round
from onebyte.coordinator_free.policy import RoundPolicy
from onebyte.coordinator_free.rounds import RoundClock
from onebyte.coordinator_free.seedlog import SeedLog, SeedLogError, entry_line
from onebyte.dht.client import RecordClient, start_dht
from onebyte.dht.identity import Identity
from onebyte.dht.records import ContributionRecord
from onebyte.metrics.peer import PeerMetrics
from onebyte.p2p.transfer import ServedState, Transfer
from onebyte.peer.applier import RoundApplier
from onebyte.peer.catchup import CatchUp, Source
from onebyte.peer.report import RoundLog
from onebyte.peer.state import ReplicaState
from onebyte.peer.train import TrainConfig, build
from onebyte.peer.voting import HashVoting
from onebyte.zo.codec import ByteCodec

RUN = "srcs"


@pytest.fixture(scope="module")
def replica():
    return build(TrainConfig(model="tiny-llama", max_length=32, table_log2=16, progress=False))[2]


def _line(policy: RoundPolicy, round_: int, records: dict[str, bytes]) -> bytes:
    """A seed-log entry with the digest its source computes for it (any source can)."""
    recs = {p: ContributionRecord(round=round_, published_at=0.0, codes=c) for p, c in records.items()}
    rs = decide_round(RUN, round_, recs, close_time=float("inf"), contribs_per_round=4, codec=policy.codec)
    return entry_line(round_, rs.digest, rs.records)


class Joiner:
    """A catching-up peer's CatchUp with its real collaborators, on its own DHT node."""

    def __init__(self, replica, policy: RoundPolicy, initial_peers: list[str]):
        self.identity = Identity()
        self.dht = start_dht(self.identity, initial_peers)
        self.client = RecordClient(self.dht, self.identity, timeout=30)
        self.stats: Counter = Counter()
        metrics = PeerMetrics(process=False)
        common = dict(peer_id=self.identity.peer_id, tag="joiner", stats=self.stats, metrics=metrics)
        self.state = ReplicaState(replica, SeedLog())
        voting = HashVoting(self.state, policy, self.client, hash_every=5, settle_seconds=1.0, **common)
        applier = RoundApplier(self.state, policy, **common)
        self.transfer = Transfer(self.dht, RUN)
        self.catchup = CatchUp(
            self.state,
            applier,
            voting,
            self.transfer,
            self.client,
            hash_every=5,
            mode="log",
            progress=False,
            stop=threading.Event(),
            round_log=RoundLog(None, "joiner"),
            **common,
        )

    def close(self) -> None:
        self.transfer.close()
        self.dht.shutdown()


def test_a_catch_up_log_entry_must_hold_the_records_the_dht_holds(replica):
    """Key A (the source's own) signed 0x41 for round 0 and 0x42 for round 1 and stored them in the
    DHT. A source whose log says A sent 0x7f in round 1 (with the digest it computed for that) is refused at round 1,
    after round 0 was applied; the honest log is applied to its end. An empty entry needs no check."""
    src_id = Identity()
    a_id = src_id  # the source's DHT node signs as its own key: A is the source itself
    start = time.time() - 100.0  # rounds 0..9 closed; their records live 6 h
    policy = RoundPolicy(RUN, 4, ByteCodec(), V1_RULE, RoundClock(start, 5.0, 1.0, 1.0))
    src_dht = start_dht(src_id)
    maddrs = [str(m) for m in src_dht.get_visible_maddrs()]
    joiner = Joiner(replica, policy, maddrs)
    served = SeedLog()
    source = Transfer(src_dht, RUN)
    source.serve(ServedState(served.span, served.lines, served.contributions, lambda: None))
    try:
        writer = RecordClient(src_dht, src_id, timeout=30)
        for r, code in ((0, b"\x41"), (1, b"\x42")):
            rec = ContributionRecord(round=r, published_at=start + 5.0 * r + 1.0, codes=code)
            assert writer.publish_contributions(RUN, rec, get_dht_time() + 600)
        honest = [_line(policy, 0, {a_id.peer_id: b"\x41"}), _line(policy, 1, {a_id.peer_id: b"\x42"})]
        honest.append(_line(policy, 2, {}))
        forged = _line(policy, 1, {a_id.peer_id: b"\x7f"})
        for line in (honest[0], forged, honest[2]):
            served.put_line(line)
        joiner.transfer.connect(source.p2p_id, source.addrs)
        src = Source(src_id.peer_id, source.p2p_id, (0, 2), 2, None)
        with pytest.raises(SeedLogError, match="round 1 holds records the DHT does not"):
            joiner.catchup.replay_log(src, 2)
        refused_at = joiner.state.applied
        served.put_line(honest[1])
        joiner.catchup.replay_log(src, 2)
    finally:
        joiner.close()
        source.close()
        src_dht.shutdown()
    assert refused_at == 0
    assert joiner.state.applied == 2 and joiner.stats["log_entries_refused"] == 1
    assert joiner.state.seedlog.get(1) == honest[1]


def test_the_initial_weights_are_served_as_round_minus_one_and_checked_against_the_manifest(replica):
    """A peer serves the run's initial trainable tensors as round -1 (§14). A joiner whose weights are
    anything else installs them and holds the manifest's initial hash; a source whose tensors do not
    hash to the manifest's initial hash (though its header names it) is refused and changes nothing."""
    import torch

    from onebyte.peer.checkpoint import CheckpointError
    from onebyte.peer.served import InitialWeights, fetch_initial

    fresh = build(TrainConfig(model="tiny-llama", max_length=32, table_log2=16, progress=False))[2]
    initial_sha = fresh.sha256()
    good = {name: t.detach().clone() for name, t in fresh.params}
    bad = {name: t + 1 if i == 0 else t for i, (name, t) in enumerate(sorted(good.items()))}
    policy = RoundPolicy(RUN, 4, ByteCodec(), V1_RULE, RoundClock(time.time(), 5.0, 1.0, 1.0))
    honest_dht, liar_dht = start_dht(Identity()), start_dht(Identity())
    joiner = Joiner(replica, policy, [str(m) for m in honest_dht.get_visible_maddrs()])
    sources = []
    for dht, tensors in ((honest_dht, good), (liar_dht, bad)):
        t = Transfer(dht, RUN)
        t.serve(
            ServedState(
                lambda: None,
                lambda a, b: [],
                lambda a, b: 0,
                lambda: None,
                InitialWeights(initial_sha, lambda d=tensors: d),
            )
        )
        sources.append(t)
    honest, liar = sources
    try:
        with torch.no_grad():
            for _, p in replica.params:
                p.add_(0.5)
        before = replica.sha256()
        for s in sources:
            joiner.transfer.connect(s.p2p_id, s.addrs)
        with pytest.raises(CheckpointError, match="corrupted"):
            fetch_initial(joiner.transfer, liar.p2p_id, initial_sha, replica.params)
        after_liar = replica.sha256()
        fetch_initial(joiner.transfer, honest.p2p_id, initial_sha, replica.params)
        after = replica.sha256()
        with pytest.raises(CheckpointError, match="not the initial weights"):
            fetch_initial(joiner.transfer, honest.p2p_id, "ab" * 32, replica.params)
    finally:
        joiner.close()
        for t in sources:
            t.close()
        honest_dht.shutdown()
        liar_dht.shutdown()
    assert before != initial_sha and after_liar == before
    assert after == initial_sha
