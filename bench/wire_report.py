"""bench/wire_bytes.py's console summary and figure, from its results dict (the JSON it wrote)."""

from __future__ import annotations

from pathlib import Path

from harness import table


def plot(results: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    runs = results["runs"]
    if not runs:
        return False
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 5.6))
    series: dict = {}
    for r in runs:
        if r.get("bytes_per_contribution"):
            series.setdefault((r["k"], r["replicas"]), []).append((r["n"], r["bytes_per_contribution"]))
    for (k, rep), pts in sorted(series.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"onebyte K={k}, replicas={rep}")
    for rep, marker in (("r2", "x"), ("r1", "+")):
        pts = sorted(
            (b["n"], b["lean"][rep]["bytes_per_contribution"])
            for b in results.get("breakdown", [])
            if rep in b.get("lean", {})
        )
        if pts:
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker,
                ls=":",
                color="black",
                ms=8,
                label=(
                    f"no-crawl store+read on {rep[1:]} nearest node(s), K={results['breakdown'][0]['k']} "
                    "(per-op measured)"
                ),
            )
    ax.axhline(
        results["naive_one_record_per_contribution_bytes"],
        color="gray",
        ls="--",
        label="naive: one DHT record per contribution",
    )
    ax.axhline(results["goal"]["bytes_per_contribution_at_n8"], color="green", ls=":", label="goal: 64 B at N=8")
    ax.set_yscale("log")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({r["n"] for r in runs}), [str(x) for x in sorted({r["n"] for r in runs})])
    ax.set_xlabel("peers N")
    ax.set_ylabel("bytes on the wire per contribution")
    ax.set_title("wire bytes per contribution (all overhead)")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1)
    by_n = results["latency_by_n"]
    ns = sorted(int(x) for x in by_n)
    ax2.bar([str(x) for x in ns], [by_n[str(x)]["median_s"] for x in ns], label="median")
    ax2.scatter([str(x) for x in ns], [by_n[str(x)]["p95_s"] for x in ns], color="red", zorder=3, label="p95")
    settle = runs[0]["settle_seconds"]
    ax2.axhline(settle, color="gray", ls="--", label=f"settle floor {settle:g}s")
    ax2.set_xlabel("peers N")
    ax2.set_ylabel("seconds after round close until every peer applied it")
    ax2.set_title("round latency")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def _f(x, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def print_table(res: dict) -> None:
    hdr = (
        "N",
        "K",
        "repl",
        "fill",
        "contribs",
        "bytes",
        "packets",
        "B/contrib",
        "B/peer/round",
        "idle B/s",
        "lat med",
        "lat p95",
        "all recv",
    )
    rows = []
    for r in res["runs"]:
        rows.append(
            (
                r["n"],
                r["k"],
                r["replicas"],
                f"{r['fill']:.2f}",
                r["contributions"],
                f"{r['bytes']:.0f}",
                f"{r['packets']:.0f}",
                _f(r["bytes_per_contribution"], ".1f"),
                f"{r['bytes_per_peer_per_round']:.0f}",
                "n/a" if r["idle"]["bytes_per_second"] is None else f"{r['idle']['bytes_per_second']:.0f}",
                f"{r['latency_median_s']:.2f}",
                f"{r['latency_p95_s']:.2f}",
                "yes" if r["every_peer_received_every_contribution"] else "NO",
            )
        )
    print()
    print(table(rows, hdr, right=True))
    if res["fits"]:
        print("\nlinear fit per (N, replicas): bytes/round = fixed + marginal * contributions/round")
        for f in res["fits"]:
            print(
                f"  N={f['n']} replicas={f['replicas']}: marginal {f['marginal_bytes_per_contribution']:.1f} "
                "B/contribution, "
                f"fixed {f['fixed_bytes_per_peer_per_round']:.0f} B/peer/round"
            )
    for b in res.get("breakdown", []):
        op, n = b["per_op"], b["n"]
        print(
            f"\nper-operation bytes, N={n}, K={b['k']}, replicas={b['replicas']} (measured one kind at a "
            "time, background subtracted):"
        )
        for name in (
            "heartbeat_store",
            "announce_store",
            "contribution_store",
            "round_read",
            "hash_store",
            "hash_read",
        ):
            print(
                f"  {name:<20} {op[name]:>9.0f} B/op  x{n} peers = {b['model_per_round'][name]:>9.0f} B/round  "
                f"({100 * b['model_share'][name]:.0f}%)"
            )
        print(
            f"  {'background':<20} {b['background_bytes_per_second']:>9.0f} B/s  = "
            f"{b['model_per_round']['background']:>9.0f} B/round  "
            f"({100 * b['model_share']['background']:.0f}%)"
        )
        print(
            f"  sum {b['model_bytes_per_round']:.0f} B/round = {b['model_bytes_per_contribution']:.1f} B/contribution; "
            f"record: {b['record_bytes']['value_msgpack']} B value + 64 B signature + "
            f"{b['record_bytes']['subkey_msgpack']} B subkey"
        )
        for name, lean in b["lean"].items():
            print(
                f"  lean store+read on the {name[1:]} nearest node(s), no crawl: {lean['store_per_op']:.0f} "
                f"+ {lean['read_per_op']:.0f} B/peer/round "
                f"= {lean['bytes_per_contribution']:.1f} B/contribution (reads complete: {lean['reads_complete']})"
            )
    print("\nround latency (max over peers of applied - close), all configurations per N:")
    for n, v in res["latency_by_n"].items():
        print(
            f"  N={n}: median {v['median_s']:.2f}s, p95 {v['p95_s']:.2f}s over {v['rounds']} rounds (settle "
            f"floor {v['settle_floor_s']:g}s)"
        )
    print("\nhivemind first-order all-reduce, SmolLM2-135M (COMPUTED from its wire format, not measured):")
    for row in res["hivemind_first_order"]["per_n"]:
        print(
            f"  N={row['n']}: fp16 {row['fp16']['wire_bytes_per_step_swarm'] / 1e9:.2f} GB/step for the swarm, "
            f"{row['fp16']['wire_bytes_per_peer_per_step'] / 1e6:.0f} MB per peer per step (= per gradient); fp32 x2"
        )
    g = res["goal"]
    print(
        f"\ngoal <= {g['bytes_per_contribution_at_n8']} B/contribution at N=8: "
        f"{'MET' if g['met'] else 'missed'}; best {g['best_at_n8']}"
    )
    print(f"load: start {res['machine']['load_at_start']} | end {res['machine']['load_at_end']}")
