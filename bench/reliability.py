"""Reliability: run the attack, fault and bad-input scenarios and write RELIABILITY.md.

Every scenario is a test that tries it against real `onebyte peer` processes and real hivemind DHT
nodes (tests/adversaries/test_hostile_records.py, tests/adversaries/test_faults.py, \
tests/cli/test_bad_input.py); each test prints one
`RELIABILITY {json}` line with its figures (tests/support/figures.py). This script runs those tests with
pytest (ONEBYTE_RELIABILITY=1 adds the scenarios the regular suite leaves out for time), collects
each test's outcome (JUnit XML) and figures, adds the load figures of bench/load.py, and writes
  * bench/results/reliability.json: everything collected,
  * RELIABILITY.md: attacks tried and how each ended, rejections by reason, bounded influence,
    faults survived, rounds and contributions lost, hash agreement, bad input, load.
The network-partition scenario needs root (network namespaces); without it it is skipped, and
RELIABILITY.md says so.

    python bench/reliability.py                   # the scenarios (~15 min on 2 cores) + the last \
bench/results/load.json
    python bench/reliability.py --load            # also rerun bench/load.py first (16 peers, ~8 min)
    python bench/reliability.py --from-json       # only rewrite RELIABILITY.md from bench/results/reliability.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from harness import RESULTS, ROOT, cpu_name, git_head, log, md_table, write_results

TEST_FILES = [
    "tests/adversaries/test_hostile_records.py",
    "tests/adversaries/test_faults.py",
    "tests/cli/test_bad_input.py",
    "tests/adversaries/test_nonfinite_losses.py",
    "tests/adversaries/test_hostile_bounds.py",
    "tests/adversaries/test_verify.py",
    "tests/unit/test_robust_rule.py",
    "tests/adversaries/test_greedy_downloaders.py",
    "tests/adversaries/test_sybil_flood.py",
]
BAD_INPUT_FILES = ("test_bad_input", "test_nonfinite_losses")  # the "Bad local input" section

# what each attack of tests/adversaries/test_hostile_records.py::test_records_from_a_hostile_dht_client... does
# (names as the test records them)
ATTACKS = {
    "unsigned": "a record with no signature under the attacker's own key",
    "bad_signature": "a record with 64 random bytes as its signature",
    "forged_under_victim_key": "a record under an honest peer's key, signed by the attacker's key",
    "replayed_into_new_round": "an honest peer's genuine signed record, copied into a later round's key",
    "replayed_redated": "an honest peer's genuine signed record, re-stored with a later expiration",
    "tampered": "an honest peer's genuine record with its last code byte changed, signature kept",
    "signed_for_another_round": "a record signed for round r+1, stored under round r",
    "foreign_subkey_bytes": "a value under a subkey that is not an onebyte key (b'evil')",
    "foreign_subkey_ob2": "a value under a 35-byte subkey with another marker ('ob2')",
    "foreign_subkey_35_bytes": "a value under 35 zero bytes as subkey",
    "plain_value_over_the_round": (
        "a plain value (no subkey) under the round's key, expiring in a year (would replace the round's records)"
    ),
    "not_msgpack": "a validly signed value that is not msgpack (used to stall every reader of the key)",
    "not_a_record_map": "signed: a map instead of a record",
    "version_2": "signed: a record of schema version 2",
    "three_fields": "signed: a record with 3 fields",
    "five_fields": "signed: a record with 5 fields",
    "round_as_string": "signed: the round as a string",
    "codes_as_string": "signed: the codes as a string",
    "negative_round": "signed: round -5",
    "nan_published_at": "signed: published_at = NaN",
    "inf_published_at": "signed: published_at = +inf",
    "bare_bytes": "signed: bare bytes instead of a record",
    "no_codes": "signed: a record with no codes",
    "oversized": "signed: 9,000 codes (over the 8 KB value limit)",
    "wrong_round_far_future": "signed: a record naming round r + 1,000,000 under round r",
    "wrong_round_max_u64": "signed: a record naming round 2^64 - 1",
    "wrong_round_past": "signed: a record naming round 0 under round r",
    "too_many_codes": "signed: K + 1 codes",
    "claims_late": "signed: published_at 1,000 s after the round closes",
    "far_future_key": "signed, valid: a record for round r + 100,000 (never read in the run)",
    "backdated_past_round": "signed, valid: a backdated record for round 0, stored after every peer applied it",
}
EXPECTED = {  # how each stored-then-rejected attack is counted by readers
    "oversized": "oversized",
    "wrong_round_far_future": "wrong_round",
    "wrong_round_max_u64": "wrong_round",
    "wrong_round_past": "wrong_round",
    "too_many_codes": "too_many_codes",
    "claims_late": "late",
    "no_codes": "malformed (round stage)",
    "far_future_key": "never read: no effect",
    "backdated_past_round": "round 0 already applied: no effect",
}


def run_tests(workdir: Path, extra: list[str]) -> dict:
    junit = workdir / "junit.xml"
    out = workdir / "pytest.out"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-s",
        "-p",
        "no:cacheprovider",
        "-rA",
        f"--junitxml={junit}",
        *TEST_FILES,
        *extra,
    ]
    log("running " + " ".join(cmd[1:]))
    t0 = time.time()
    with open(out, "w") as f:
        code = subprocess.run(
            cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=os.environ | {"ONEBYTE_RELIABILITY": "1"}
        ).returncode
    seconds = time.time() - t0
    figures = []
    for line in out.read_text(errors="replace").splitlines():
        i = line.find("RELIABILITY {")
        if i >= 0:
            try:
                figures.append(json.loads(line[i + len("RELIABILITY ") :]))
            except ValueError:
                pass
    tests = []
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            outcome, message = "passed", ""
            for child in case:
                if child.tag in ("failure", "error"):
                    outcome, message = "failed", (child.get("message") or "")[:300]
                elif child.tag == "skipped":
                    xfail = (child.get("type") or "") == "pytest.xfail"
                    outcome, message = ("xfailed" if xfail else "skipped"), (child.get("message") or "")[:300]
            tests.append(
                {
                    "file": case.get("classname", "").replace(".", "/") + ".py",
                    "name": case.get("name"),
                    "seconds": float(case.get("time", 0)),
                    "outcome": outcome,
                    "message": message,
                }
            )
    log(
        f"pytest exit {code} in {seconds:.0f}s: "
        + ", ".join(
            f"{k} {sum(1 for t in tests if t['outcome'] == k)}" for k in ("passed", "failed", "skipped", "xfailed")
        )
    )
    return {
        "exit_code": code,
        "seconds": seconds,
        "tests": tests,
        "figures": figures,
        "output_tail": out.read_text(errors="replace")[-4000:],
    }


def machine() -> dict:
    return {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "git_head": git_head(mark_dirty=False),
        "loadavg_at_end": os.getloadavg(),
        "root": os.geteuid() == 0 if hasattr(os, "geteuid") else None,
    }


# -- RELIABILITY.md ------------------------------------------------------------------------------------------------


def fig(data: dict, scenario: str, **match) -> list[dict]:
    return [
        f for f in data["run"]["figures"] if f["scenario"] == scenario and all(f.get(k) == v for k, v in match.items())
    ]


def outcome(data: dict, pattern: str) -> str:
    hits = [t for t in data["run"]["tests"] if re.search(pattern, t["name"])]
    if not hits:
        return "not run"
    kinds = sorted({t["outcome"] for t in hits})
    return "/".join(kinds) + (f" ({len(hits)})" if len(hits) > 1 else "")


def render(data: dict) -> str:
    run, m = data["run"], data["machine"]
    tests = run["tests"]
    count = {k: sum(1 for t in tests if t["outcome"] == k) for k in ("passed", "failed", "skipped", "xfailed")}
    L = [
        "# Reliability",
        "",
        f"Produced by `python bench/reliability.py` on {data['date']} at commit `{m['git_head']}` "
        f"({m['cpu']}, {m['cpu_count']} cores, "
        f"load average {m['loadavg_at_end'][0]:.1f} at the end: other work shared the machine). It runs the "
        "scenarios of "
        "`tests/adversaries/test_hostile_records.py`, `tests/adversaries/test_faults.py` and "
        "`tests/cli/test_bad_input.py` against real `onebyte peer` processes and real "
        f"hivemind DHT nodes on loopback (and in network namespaces), and took {run['seconds'] / 60:.1f} minutes. "
        "What an attacker can and cannot do, and why: [docs/THREATS.md](docs/THREATS.md). All figures: "
        "`bench/results/reliability.json`." + "".join(f" {u}" for u in data.get("updated", [])),
        "",
        "## Summary",
        "",
    ]
    hostile = (fig(data, "hostile_records") or [None])[0]
    faults = [f for f in run["figures"] if f["scenario"] in ("partition", "skew_and_slow", "random_kills")]
    agreeing = [f for f in run["figures"] if "distinct_final_hashes" in f]
    rows = [
        [
            "tests",
            f"{count['passed']} passed, {count['failed']} failed, {count['skipped']} skipped, "
            f"{count['xfailed']} expected failures",
        ]
    ]
    if hostile:
        rej = {}
        for peer in hostile["rejected_per_peer"].values():
            for k, v in peer.items():
                rej[k] = max(rej.get(k, 0), v)
        validator = {k.split("/")[0]: v for k, v in hostile["metrics_peer_a"].items() if k.endswith("/validator")}
        rows += [
            [
                "attacks tried (records)",
                f"{len(hostile['refused_by_every_node']) + len(hostile['stored_then_rejected']) + 2} kinds "
                f"({len(hostile['refused_by_every_node'])} refused by every DHT node, "
                f"{len(hostile['stored_then_rejected'])} stored and judged by "
                "readers, a duplicate re-sent 20 times, a flood of 160 stores from one key)",
            ],
            [
                "refused by the DHT validator (peer a's node)",
                ", ".join(f"{k} {v:g}" for k, v in sorted(validator.items())),
            ],
            ["rejected by readers (per honest peer)", ", ".join(f"{k} {v}" for k, v in sorted(rej.items()))],
            [
                "hostile records applied",
                "none (every seed log: only honest keys and the one valid duplicate, once)"
                if outcome(data, "hostile_dht_client") == "passed"
                else "SEE TESTS",
            ],
        ]
    ext = (fig(data, "private_run_extreme_member") or [None])[0]
    if ext:
        ratio = [r["max_move"] / r["bound"] for r in ext["rounds"]]
        rows.append(
            [
                "extreme-byte peer",
                f"moved any weight by at most {max(ratio):.6f} x its bound K·lr·g_max/n in {len(ratio)} rounds "
                "(share of a round "
                f"{min(ext['attacker_share_of_round']):.2f}-{max(ext['attacker_share_of_round']):.2f}); "
                "flagged by "
                f"{sum(1 for s in ext['suspects'].values() if ext['attacker'] in s)} of 2 honest peers",
            ]
        )
    survived = sum(1 for f in faults if f.get("distinct_final_hashes") == 1)
    rows.append(["faults survived", f"{survived} of {len(faults)} scenarios ended with one weight hash"])
    lost_rounds = {f"partition {f['split']}": len(f["rounds_with_no_contribution"]) for f in fig(data, "partition")}
    rows.append(
        [
            "rounds lost",
            "; ".join(
                f"{k}: {v} round(s) of the agreed history got no contribution while cut" for k, v in lost_rounds.items()
            )
            + "; no scenario left a round unapplied (every surviving peer applied every round)"
            if lost_rounds
            else "n/a",
        ]
    )
    rows.append(
        [
            "hashes agreeing",
            f"{sum(1 for f in agreeing if f['distinct_final_hashes'] == 1)} of {len(agreeing)} scenarios end "
            "with every peer on one hash",
        ]
    )
    load = data.get("load")
    if load:
        big = max(load["results"], key=lambda r: r["peers"])
        rows.append(
            [
                "load",
                f"{big['peers']} peers on {m['cpu_count']} cores: every round applied by every peer "
                f"{big['every_round_applied_by_every_peer']}, "
                f"hashes equal {big['all_hashes_equal']}, round latency median "
                f"{big['latency_seconds']['median']:.2f} s, "
                f"CPU {big['cpu_cores_per_peer']['mean']:.2f} cores per peer",
            ]
        )
    L += [md_table(rows, ["", ""]), ""]

    # -- attacks
    L += [
        "## Attacks on the records (tests/adversaries/test_hostile_records.py)",
        "",
        "An attacker runs its own DHT node in a live 3-peer swarm and stores raw records "
        "(tests/adversaries/hostile_client.py sends them with "
        "hivemind's own `call_store` RPC to every node it knows). Outcome per attack:",
        "",
    ]
    if hostile:
        rows = [[n, ATTACKS.get(n, ""), "refused by every node (validator)"] for n in hostile["refused_by_every_node"]]
        rows += [
            [n, ATTACKS.get(n, ""), "stored; rejected by every reader: " + EXPECTED.get(n, "malformed")]
            for n in hostile["stored_then_rejected"]
        ]
        rows.append(["duplicate", "one valid record re-sent 20 times", "applied once"])
        fl = hostile["flood"]
        rows.append(
            [
                "flood",
                f"one key: {fl['stores']} stores ({fl['rounds']} future rounds, then 40 re-stores of one) in "
                f"{fl['seconds']:.1f} s",
                "every read one was rejected (too_many_codes); rounds kept closing",
            ]
        )
        L += [md_table(rows, ["attack", "what", "outcome"]), ""]
        peers = sorted(hostile["rejected_per_peer"])
        reasons = sorted({k for p in hostile["rejected_per_peer"].values() for k in p})
        L += [
            f"Rejections counted by each honest peer (report `rejected`; rounds {hostile['target_round']} onwards):",
            "",
            md_table(
                [[r, *[hostile["rejected_per_peer"][p].get(r, 0) for p in peers]] for r in reasons], ["reason", *peers]
            ),
            "",
            "Peer a's metrics `onebyte_records_rejected_total` by reason/stage: "
            + ", ".join(f"`{k}` {v:g}" for k, v in sorted(hostile["metrics_peer_a"].items()))
            + ".",
            "",
            f"The swarm: {hostile['distinct_final_hashes']} distinct final hash(es), "
            f"{hostile['hash_mismatches']} hash mismatches, every peer at round "
            f"{max(hostile['last_rounds'].values())} of {hostile['rounds'] - 1}; contributions published "
            f"{hostile['contributions_published']}.",
            "",
        ]

    L += [
        "Records that used to break peers (found by these tests and fixed; each has a test with real DHT nodes):",
        "",
        md_table(
            [
                ["a validly signed value that is not msgpack", outcome(data, "not_msgpack")],
                [
                    "an unsigned plain value over a round's key (erased and blocked the round)",
                    outcome(data, "plain_value"),
                ],
                ["outsiders' hash votes in a private run", outcome(data, "outsiders_cannot_vote")],
            ],
            ["attack", "test"],
        ),
        "",
    ]
    out = (fig(data, "outsider_hash_votes") or [None])[0]
    if out:
        L += [
            f"Outsider hash votes: {out['outsiders']} outsider keys published a fake hash for rounds "
            f"{out['fake_hash_rounds']} of a "
            f"{out['members']}-member private run; members' hash mismatches / repairs: "
            + ", ".join(f"{n} {v['hash_mismatches']}/{v['repairs']}" for n, v in out["peers"].items())
            + ".",
            "",
        ]

    # -- influence
    if ext:
        L += [
            "## Bounded influence and detection",
            "",
            f"A private run of 3 members (K = {ext['contribs_per_round']}, lr = {ext['lr']}) in which member "
            "x always sends the largest "
            f"byte (g_max = {ext['g_max']:.2f}) against its estimate, plus an outsider. Replaying the agreed "
            "history, x's own part of each "
            "round's update against the bound `K·lr·g_max/n` (docs/PROTOCOL.md §15):",
            "",
            md_table(
                [
                    [
                        r["round"],
                        r["n"],
                        r["attacker_codes"],
                        f"{r['max_move']:.6g}",
                        f"{r['bound']:.6g}",
                        f"{r['max_move'] / r['bound']:.6f}",
                    ]
                    for r in ext["rounds"]
                ],
                ["round", "n", "x's codes", "max move of one weight", "bound", "ratio"],
            ),
            "",
            "Flagged: "
            + "; ".join(
                f"peer {n}: "
                + ", ".join(
                    f"{p[:8]} ({v['reason']}, {100 * v['saturated_share']:.0f}% saturated, median |g| "
                    f"{v['median_magnitude']:.3g} vs the swarm's {v['swarm_median_magnitude']:.3g})"
                    for p, v in s.items()
                )
                for n, s in ext["suspects"].items()
            )
            + ".",
            f"The outsider published {ext['outsider_published']} contributions; none was applied (not_allowed: "
            + ", ".join(f"{n} {v}" for n, v in ext["not_allowed"].items())
            + f"). Final hashes: {ext['distinct_final_hashes']} distinct.",
            "",
        ]

    # -- faults
    L += ["## Faults (tests/adversaries/test_faults.py)", ""]
    rows = []
    for f in fig(data, "partition"):
        lost = {n: v for n, v in f["contributions_lost"].items() if v}
        rows.append(
            [
                f"partition {f['split']} (network namespaces, veth cut after round {f['cut_at_round']}, "
                f"healed after {f['healed_at_round']})",
                f"winner side {f['winner_side']}; repairs "
                + ", ".join(f"{n} {v['repairs']}" for n, v in f["peers"].items()),
                f"{len(f['rounds_with_no_contribution'])} empty round(s) {f['rounds_with_no_contribution']}; "
                f"contributions not in the agreed history {lost or 0}",
                f["distinct_final_hashes"],
            ]
        )
    for f in fig(data, "skew_and_slow"):
        p = f["peers"]
        rows.append(
            [
                f"one peer's clock {f['skew_seconds']:+g} s off (settle {f.get('settle_seconds', 3)} s), one peer "
                f"{f['slow_extra_seconds_per_contribution']} s slower per contribution ({f['round_seconds']} s rounds)",
                f"slow peer missed {p['slow']['missed_deadline']} deadline(s) and published "
                f"{p['slow']['contributions_published']}; the skewed "
                f"peer published {p['skewed']['contributions_published']}; in the agreed history: "
                f"{f['applied_in_history']}; hash mismatches "
                f"{sum(v['hash_mismatches'] for v in p.values())}",
                "0 (every peer applied every round)",
                f["distinct_final_hashes"],
            ]
        )
    for f in fig(data, "random_kills"):
        rows.append(
            [
                "SIGKILL at random rounds: "
                + ", ".join(f"{k['peer']} after round {k['after_round']}" for k in f["kills"])
                + "; the creator's kill is final; a new peer joins after it",
                "survivors "
                + ", ".join(f"{n} (repairs {v['repairs']}, catch-ups {v['catchups']})" for n, v in f["peers"].items()),
                "0 for the survivors (each applied every round)",
                f["distinct_final_hashes"],
            ]
        )
    L += [
        md_table(rows, ["fault", "what happened", "rounds / contributions lost", "distinct final hashes"])
        if rows
        else "No fault scenario ran.",
        "",
    ]
    skipped = [t for t in tests if t["outcome"] == "skipped" and "test_faults" in t["file"]]
    for t in skipped:
        L += [f"Skipped: `{t['name']}`: {t['message']}", ""]

    # -- verify, don't count (tests/adversaries/test_verify.py)
    rows = []
    for f in fig(data, "sybil_votes_votes") + fig(data, "sybil_votes_contribute"):
        how = "never contribute" if f["scenario"].endswith("votes") else "contribute to every round"
        rows.append(
            [
                f"{f['keys']} Sybil keys that {how} vote a ground state (hash {f['forged_prefix']}…) against "
                f"{f['honest_voters']} honest voters; "
                f"it is offered as a checkpoint for rounds {f['offered_rounds']} "
                f"({f['checkpoint_offers_served']} offers)",
                f"joiner refused {f['joiner_refused']} offer(s); votes ignored {f['votes_ignored']}; "
                "verified by recomputation and kept "
                f"{f['repairs_refused']}",
                f"{f['repairs']} installs of the forged state",
                "1" if f["final_hashes_equal"] else ">1",
            ]
        )
    for f in fig(data, "late_votes_under_cpu_load"):
        rows.append(
            [
                f"late honest votes, two wrong peers on time, {f['busy_loops']} busy loops on the cores",
                f"wrong peers repaired {f['wrong_peers_repaired']}; honest verifications kept "
                f"{f['honest_verifications_kept']}",
                f"{f['honest_repairs']} honest repairs",
                "1" if f["final_hashes_equal"] else ">1",
            ]
        )
    for f in fig(data, "sybil_flood_1000"):
        rows.append(
            [
                f"{f['keys']} fresh keys send the largest byte in rounds {f['flood_rounds']} against 3 honest peers "
                f"(admission by seniority, §15: cap {f['cap']}, {f['max_new']} new, window {f['seniority_window']}, "
                f"clip {f['clip_abs']})",
                f"flood codes admitted per round {sorted(set(f['sybil_codes_admitted'].values()))}; honest peers "
                f"counted in {f['honest_rounds_in_flood']} of {len(f['flood_rounds'])} flood rounds; moved "
                f"{f['move_vs_honest']}x the honest rate (unclipped: {f['unclipped_move_vs_honest']}x); applied at "
                f"most {max(f['max_seconds_after_close_in_flood'].values()):.1f} s after each round closed; a joiner "
                f"installed a checkpoint of round {f['joiner_caught_up_to'][0]} during the flood, decided every later "
                f"round as the others did, and counted from round {f['joiner_first_counted_round']}",
                "bounded",
                "1",
            ]
        )
    L += [
        "## Verify, don't count (tests/adversaries/test_verify.py)",
        "",
        md_table(rows, ["attack", "what happened", "bound", "distinct final hashes"]) if rows else "not run",
        "",
    ]

    # -- bounded parsing and resources (tests/adversaries/test_hostile_bounds.py)
    rows = []
    for f in fig(data, "nested_values_refused"):
        rows.append(
            [
                f"validly signed values {', '.join(f['values'])} under every key kind "
                f"({', '.join(f['key_kinds'])}): {f['stores']} stores",
                "refused by every node: " + ", ".join(f"{k} {v}" for k, v in sorted(f["refused_by_reason"].items())),
                f"the honest record next to them read in {f['honest_read_seconds']:.2f} s",
            ]
        )
    for f in fig(data, "reader_drops_planted_values"):
        rows.append(
            [
                "the same values already in a node's own storage (stored before it had the bounds)",
                "dropped by readers: "
                + ", ".join(f"{k} {v}" for k, v in sorted(f["rejected"].items()))
                + "; `onebyte status` and `runs` exit 0",
                f"reads took {f['read_seconds']:.2f} s in all",
            ]
        )
    for f in fig(data, "hostile_sources"):
        fails = f["failures"]
        rows.append(
            [
                f"{len(f['crash_shapes'])} malformed `.info` answers (first > last, null/string/map/3-number "
                "log, array checkpoint, not JSON, 100 KB, nested JSON)",
                f"{sum(1 for k, _ in f['crash_shapes'] if k == 'refused')} refused as that source failing",
                "no crash",
            ]
        )
        rows.append(
            [
                "a checkpoint advertised as 1,000 bytes, streamed without end (640 MB)",
                fails["flood"][0],
                f"source pushed {f['flood_bytes_sent_by_source'] / 1e6:.1f} MB before the hang-up; joiner "
                f"RSS +{f['rss_growth_mb']:.0f} MB",
            ]
        )
        for mode, what in (
            ("bigmsg", "a .log answer of one 100 MB message"),
            ("stall", "a .log stream that never sends"),
            ("liar", "a .log with lines nested 100,000 deep, for the wrong round, 2 MB long"),
        ):
            rows.append([what, fails[mode][0], f"{fails[mode][1]:.1f} s"])
        rows.append(
            [
                f"{f['tarpits']} tarpit addresses and one honest source, probed at once",
                "honest answer: " + json.dumps(f["honest_answer"]),
                f"{f['probe_seconds']:.1f} s (sequentially ~5 s per tarpit)",
            ]
        )
    for f in fig(data, "poisoned_dht_hostile_sources_tarpits"):
        c = (f["catchups"] or [{}])[0]
        rows.append(
            [
                f"a node without validator holding poison under {f['poisoned_keys']} keys of a live 3-peer "
                f"run ({f['planted_entries']} entries), "
                f"5 hostile sources and {f['tarpits']} tarpit heartbeats, a late joiner",
                f"exit codes {f['exit_codes']}; final hashes {sorted(set(f['final_hashes'].values()))}; "
                "joiner caught up from round "
                f"{c.get('from_round')} to {c.get('round')} by {c.get('method')} in "
                f"{c.get('seconds', float('nan')):.1f} s",
                "log growth per peer "
                + ", ".join(f"{n} {v / 1e3:.0f} KB" for n, v in f["log_growth_bytes"].items())
                + "; hivemind warnings suppressed "
                + ", ".join(f"{n} {v}" for n, v in f["unknown_ext_lines_suppressed"].items())
                + "; peak RSS MB "
                + ", ".join(f"{n} {v:.0f}" for n, v in f["peak_rss_mb"].items()),
            ]
        )
    for f in fig(data, "greedy downloaders"):
        c = f["attacker"]["counts"]
        rows.append(
            [
                f"a crowd of greedy downloaders: 5 requester ids, waves of 50 concurrent `.state` and 50 `.log` "
                f"requests against one peer for {f['attacker']['seconds']:.0f} s, a joiner meanwhile "
                "(tests/adversaries/test_greedy_downloaders.py)",
                f"served {c['state']['served']} checkpoints and {c['log']['served']} logs, refused "
                f"{c['state']['busy'] + c['log']['busy']} at once (busy); rounds {f['rounds_during_attack'][0]}.."
                f"{f['rounds_during_attack'][1]} all applied; the joiner caught up",
                f"peer RSS +{f['peer_memory_growth_mb']:.0f} MB (budget 300 MB; 1,820 MB without the serving budget)",
            ]
        )
    L += [
        "## Bounded parsing and resources (tests/adversaries/test_hostile_bounds.py)",
        "",
        md_table(rows, ["attack", "what happened", "bound"]) if rows else "not run",
        "",
    ]

    # -- bad input
    bad = [t for t in tests if any(f in t["file"] for f in BAD_INPUT_FILES)]
    L += [
        "## Bad local input (tests/cli/test_bad_input.py, tests/adversaries/test_nonfinite_losses.py)",
        "",
        "Each must give one clear error line (exit code 2, no traceback) or skip the contribution, and never "
        "leave a corrupted checkpoint:",
        "",
        md_table([[re.sub(r"^test_", "", t["name"]), t["outcome"]] for t in bad], ["case", "outcome"])
        if bad
        else "not run",
        "",
    ]

    # -- load
    if load:
        L += [
            "## Load (bench/load.py)",
            "",
            "Tiny-model peers (tiny-llama, 3.2 M weights, 1 torch thread each) on loopback, "
            f"{load['config']['rounds']} rounds of "
            f"{load['config']['round_seconds']} s, K = {load['config']['contribs']}; latency = from a "
            "round's close to the moment a peer applied it "
            "(the settle window, reading the round from the DHT, applying it); CPU = the peer's process tree "
            "(python, DHT process, p2p daemon).",
            "",
            md_table(
                [
                    [
                        r["peers"],
                        f"{r['peers_finished']}/{r['peers']}",
                        r["every_round_applied_by_every_peer"],
                        r["all_hashes_equal"],
                        r["hash_mismatches_total"],
                        r["contributions_per_round_median"],
                        f"{r['latency_seconds']['median']:.2f} / {r['latency_seconds']['p90']:.2f} / "
                        f"{r['latency_seconds']['max']:.2f}",
                        f"{r['settle_seconds']:.0f}",
                        f"{r['cpu_cores_per_peer']['mean']:.3f} (max {r['cpu_cores_per_peer']['max']:.3f})",
                        f"{r['peak_pss_mb_per_peer']['mean']:.0f}"
                        if "peak_pss_mb_per_peer" in r
                        else f"RSS {r['peak_rss_mb_per_peer']['mean']:.0f}",
                        f"{r['loadavg_at_end'][0]:.1f}",
                    ]
                    for r in load["results"]
                ],
                [
                    "peers",
                    "finished",
                    "every round applied",
                    "hashes equal",
                    "mismatches",
                    "contributions/round",
                    "latency s median / p90 / max",
                    "settle s",
                    "CPU cores per peer",
                    "memory MB per peer (PSS)",
                    "load avg at end",
                ],
            ),
            "",
            "Memory, not CPU, is what limits the number of peers here: each peer is a python process, a "
            "forked DHT process and a "
            "p2p daemon.",
            "",
        ]

    L += [
        "## Every test",
        "",
        md_table(
            [[t["file"], t["name"], t["outcome"], f"{t['seconds']:.0f}"] for t in tests],
            ["file", "test", "outcome", "seconds"],
        ),
        "",
    ]
    return "\n".join(L)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--load", action="store_true", help="rerun bench/load.py first (else use bench/results/load.json if present)"
    )
    p.add_argument("--load-peers", default="16")
    p.add_argument(
        "--from-json", action="store_true", help="only render RELIABILITY.md from bench/results/reliability.json"
    )
    p.add_argument(
        "-k", default=None, help="pytest -k expression (a partial run; RELIABILITY.md then shows only what ran)"
    )
    p.add_argument("--out", default=str(ROOT / "RELIABILITY.md"))
    p.add_argument("--json", default=str(RESULTS / "reliability.json"))
    args = p.parse_args()
    if args.from_json:
        data = json.loads(Path(args.json).read_text())
    else:
        if args.load:
            log("running bench/load.py")
            subprocess.run([sys.executable, str(ROOT / "bench" / "load.py"), "--peers", args.load_peers], cwd=ROOT)
        workdir = Path(tempfile.mkdtemp(prefix="onebyte-reliability-"))
        run = run_tests(workdir, ["-k", args.k] if args.k else [])
        load_json = RESULTS / "load.json"
        data = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "machine": machine(),
            "run": run,
            "load": json.loads(load_json.read_text()) if load_json.exists() else None,
        }
        write_results("reliability", data, args.json)
        log(f"wrote {args.json} (pytest output in {workdir})")
    Path(args.out).write_text(render(data) + "\n")
    log(f"wrote {args.out}")
    return 0 if data["run"]["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
