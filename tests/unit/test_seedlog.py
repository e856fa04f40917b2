"""The seed log and the catch-up planner: pure logic, no network."""

from __future__ import annotations

import pytest

from onebyte.coordinator_free.agreement import decide_round
from onebyte.coordinator_free.seedlog import SeedLog, SeedLogError, entry_line, replay_set
from onebyte.dht.records import ContributionRecord
from onebyte.peer.catchup import Plan, Source, plans
from onebyte.zo.codec import make_codec

CODEC = make_codec("log8:-8:8")
A, B = "aa" * 32, "bb" * 32


def decided(round_: int):
    recs = {
        B: ContributionRecord(round=round_, published_at=1.0, codes=b"\x01\x82"),
        A: ContributionRecord(round=round_, published_at=1.0, codes=b"\x05"),
    }
    return decide_round("run", round_, recs, close_time=10.0, contribs_per_round=4, codec=CODEC)


def test_replaying_a_log_entry_gives_the_live_round_set():
    live = decided(7)
    line = entry_line(7, live.digest, live.records)
    again = replay_set("run", line, contribs_per_round=4, codec=CODEC)
    assert (
        again.contributions == live.contributions
        and again.digest == live.digest
        and again.records == [(A, b"\x05"), (B, b"\x01\x82")]
    )


@pytest.mark.parametrize(
    "tamper",
    [
        lambda line: line.replace(b'"05"', b'"06"'),
        lambda line: line.replace(b'"round":7', b'"round":8'),
        lambda line: line[:-20],
        lambda line: b"not json",
    ],
)
def test_an_altered_or_broken_log_entry_is_refused(tamper):
    live = decided(7)
    with pytest.raises(SeedLogError):
        replay_set("run", tamper(entry_line(7, live.digest, live.records)), contribs_per_round=4, codec=CODEC)


def test_a_log_entry_with_more_codes_than_the_run_allows_is_refused():
    live = decided(7)
    with pytest.raises(SeedLogError):
        replay_set("run", entry_line(7, live.digest, live.records), contribs_per_round=1, codec=CODEC)


def test_seed_log_on_disk_survives_a_torn_write_and_later_lines_win(tmp_path):
    path = tmp_path / "seedlog.jsonl"
    log = SeedLog(path)
    for r in range(5):
        d = decided(r)
        log.put(r, d.digest, d.records)
    d3 = decide_round(
        "run",
        3,
        {A: ContributionRecord(round=3, published_at=1.0, codes=b"\x05")},
        close_time=10.0,
        contribs_per_round=4,
        codec=CODEC,
    )
    log.put(3, d3.digest, d3.records)  # a repaired round: replaced
    with open(path, "ab") as f:
        f.write(b'{"round":5,"dig')  # crash mid-line
    again = SeedLog(path)
    assert again.span() == (0, 4)
    assert again.get(3) == log.get(3) and b'"bb' not in again.get(3)
    assert again.contributions(0, 4) == 4 * 3 + 1
    assert [replay_set("run", line, contribs_per_round=4, codec=CODEC).round for line in again.lines(0, 9)] == [
        0,
        1,
        2,
        3,
        4,
    ]


def source(log, ck_round, ck_bytes=10_000_000):
    return Source("p", "id", log, 8 * (log[1] - log[0] + 1), {"round": ck_round, "sha256": "0" * 64, "bytes": ck_bytes})


def test_catch_up_plan_is_the_log_for_a_short_gap_and_a_checkpoint_for_a_long_one():
    kw = dict(apply_seconds_per_contribution=0.005, bandwidth=20e6)
    short = plans(95, 100, [source((0, 100), 95)], **kw)
    assert short[0].method == "log" and short[0].first_replayed == 96
    for history in (500, 5_000, 50_000):
        best = plans(-1, history, [source((0, history), history - 5)], **kw)[0]
        assert best.method == "checkpoint" and best.first_replayed == history - 4
        assert best.seconds == pytest.approx(0.5 + 5 * 8 * 0.005)  # flat in the history's length


def test_repair_never_replays_its_own_state_and_may_use_an_older_checkpoint():
    options = plans(
        100, 100, [source((0, 100), 90)], apply_seconds_per_contribution=0.005, bandwidth=20e6, state_valid=False
    )
    assert [p.method for p in options] == ["checkpoint"] and options[0].first_replayed == 91
    assert isinstance(options[0], Plan)
