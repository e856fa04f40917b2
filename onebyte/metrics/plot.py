"""``onebyte plot``: PNG charts of a run, from what a run leaves behind.

Inputs, in any mix:
- a round log (``onebyte peer --round-log``, JSON lines): one ``{"event": "applied", "round", "time",
  "contributions", "peers", "local", "sha256", "loss", "apply_seconds", "latency_seconds"}`` per
  round, and optionally ``{"event": "eval", "round", "accuracy", "loss"}`` lines; other events are
  ignored;
- a report (``onebyte demo --report``, or a peer's ``--report``): the held-out evaluation before and
  after; a demo report also points at its workdir, whose round logs are read when none is given;
- a demo workdir (its ``report.json`` and ``peer*.rounds.jsonl``);
- a ``bench/wire_bytes.py`` result: bytes on the wire per contribution for each configuration.

Charts (only those the inputs have data for): ``loss.png`` (train loss per round, per peer),
``accuracy.png`` (held-out accuracy and loss), ``contributions.png`` (contributions per round, by
peer), ``latency.png`` (round close to applied, and apply time), ``bytes.png`` (bytes per
contribution) and ``overview.png`` (the first four on one page).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure


@dataclass
class RunData:
    logs: dict[str, list[dict]] = field(default_factory=dict)  # peer name -> applied events, by round
    evals: dict[str, list[tuple[float, dict]]] = field(default_factory=dict)  # peer name -> [(rounds applied, eval)]
    bytes_runs: list[dict] = field(default_factory=list)  # wire_bytes benchmark runs
    labels: dict[str, str] = field(default_factory=dict)  # peer name -> legend label
    title: str | None = None


def load(inputs: list[str | Path]) -> RunData:
    data = RunData()
    logs_given = any(Path(p).suffix == ".jsonl" or Path(p).is_dir() for p in inputs)
    for raw in inputs:
        p = Path(raw)
        if p.is_dir():
            for log in sorted(p.glob("*.rounds.jsonl")):
                _read_log(log, data)
            for rep in sorted(p.glob("*.json")):
                obj = _read_json(rep)
                if isinstance(obj, dict) and isinstance(obj.get("peers"), list):
                    _read_report(obj, data, read_workdir=False)
        elif not p.exists():
            raise FileNotFoundError(f"no such file or folder: {p}")
        elif p.suffix == ".jsonl":
            _read_log(p, data)
        else:
            obj = _read_json(p)
            if not isinstance(obj, dict):
                raise ValueError(f"{p}: not a onebyte report, round log or wire_bytes result")
            if obj.get("benchmark") == "wire_bytes":
                data.bytes_runs += [r for r in obj.get("runs", []) if r.get("bytes_per_contribution") is not None]
            elif isinstance(obj.get("peers"), list) or "peer_id" in obj:
                _read_report(obj, data, read_workdir=not logs_given, name=p.stem)
            else:
                raise ValueError(f"{p}: not a onebyte report, round log or wire_bytes result")
    for events in data.logs.values():
        events.sort(key=lambda e: e["round"])
    return data


def _read_json(p: Path):
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not JSON ({e})") from None


def _peer_name(log: Path) -> str:
    return log.name.removesuffix(".jsonl").removesuffix(".rounds")


def _read_log(path: Path, data: RunData) -> None:
    name = _peer_name(path)
    by_round: dict[int, dict] = {}
    lines = path.read_text().splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            if n == len(lines):
                continue  # a line being written right now
            raise ValueError(f"{path}:{n}: not a JSON line") from None
        if not isinstance(ev, dict):
            continue
        if ev.get("event") == "applied" and isinstance(ev.get("round"), int):
            by_round[ev["round"]] = ev
        elif ev.get("event") == "eval" and isinstance(ev.get("round"), int):
            data.evals.setdefault(name, []).append((ev["round"] + 1, ev))
    if by_round:
        data.logs[name] = list(by_round.values())


def _read_report(rep: dict, data: RunData, read_workdir: bool, name: str = "peer0") -> None:
    if isinstance(rep.get("peers"), list):  # a demo report: peer i wrote peer{i}.rounds.jsonl
        for i, peer in enumerate(rep["peers"]):
            data.labels.setdefault(f"peer{i}", f"peer{i} ({str(peer.get('peer_id', ''))[:8]})")
        evaluator, rounds = "peer0", rep.get("rounds")
        m = rep.get("manifest") or {}
        data.title = data.title or (
            f"{rep.get('run_id', 'run')}: {len(rep['peers'])} peers, {m.get('model', '?')}, "
            f"{m.get('round_seconds', '?')} s rounds"
        )
        workdir = Path(rep["workdir"]) if read_workdir and rep.get("workdir") else None
        if workdir is not None and workdir.is_dir():
            for log in sorted(workdir.glob("peer*.rounds.jsonl")):
                _read_log(log, data)
    else:  # one peer's report
        evaluator, rounds = name, (rep.get("last_round", -1) + 1)
        data.labels.setdefault(name, f"{name} ({str(rep.get('peer_id', ''))[:8]})")
    points = data.evals.setdefault(evaluator, [])
    if rep.get("eval_before"):
        points.append((0, rep["eval_before"]))
    if rep.get("eval_after") and rounds:
        points.append((rounds, rep["eval_after"]))


# -- charts ------------------------------------------------------------------------------------
def _moving_average(xs: list[float], n: int) -> list[float]:
    out, acc, window = [], 0.0, []
    for x in xs:
        window.append(x)
        acc += x
        if len(window) > n:
            acc -= window.pop(0)
        out.append(acc / len(window))
    return out


def _loss(ax, data: RunData, smooth: int) -> bool:
    drawn = False
    for i, (name, events) in enumerate(sorted(data.logs.items())):
        pts = [(e["round"], e["loss"]) for e in events if isinstance(e.get("loss"), (int, float))]
        if not pts:
            continue
        xs, ys = zip(*pts)
        color = f"C{i % 10}"
        ax.plot(xs, ys, color=color, alpha=0.3, linewidth=0.8)
        ax.plot(xs, _moving_average(list(ys), smooth), color=color, linewidth=1.8, label=data.labels.get(name, name))
        drawn = True
    ax.set_title(f"train loss (last contribution; thick: {smooth}-round mean)")
    ax.set_xlabel("round")
    ax.set_ylabel("loss")
    if drawn:
        ax.legend(fontsize=8)
    return drawn


def _accuracy(ax, data: RunData) -> bool:
    """Balanced accuracy (solid) and accuracy (dashed) as the run goes, against the zero-shot
    model's bias-only line (dotted): only what rises above that line was learned, not calibrated."""
    drawn = False
    for i, (name, points) in enumerate(sorted(data.evals.items())):
        points = sorted(points, key=lambda p: p[0])
        label, color = data.labels.get(name, name), f"C{i % 10}"
        for key, style, what in (("balanced_accuracy", "o-", "balanced accuracy"), ("accuracy", "x--", "accuracy")):
            pts = [(x, ev[key]) for x, ev in points if isinstance(ev.get(key), (int, float))]
            if not pts:
                continue
            xs, ys = zip(*pts)
            ax.plot(
                xs,
                ys,
                style,
                color=color,
                alpha=1.0 if key == "balanced_accuracy" else 0.45,
                markersize=4,
                label=f"{label} {what}",
            )
            if key == "balanced_accuracy":
                for x, y in (pts[0], pts[-1]):
                    ax.annotate(f"{y:.3f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
            drawn = True
        line = next(
            (
                ev["bias_line_balanced_accuracy"]
                for _, ev in points
                if isinstance(ev.get("bias_line_balanced_accuracy"), (int, float))
            ),
            None,
        )
        if line is not None:
            ax.axhline(line, color=color, linestyle=":", linewidth=1.2, label=f"bias-only line at start ({line:.3f})")
    ax.set_title("held-out evaluation")
    ax.set_xlabel("rounds applied")
    ax.set_ylabel("accuracy")
    if drawn:
        ax.legend(fontsize=7, loc="lower right")
    return drawn


def _contributions(ax, data: RunData) -> bool:
    if not data.logs:
        return False
    rounds = sorted({e["round"] for events in data.logs.values() for e in events})
    bottom = {r: 0 for r in rounds}
    for i, (name, events) in enumerate(sorted(data.logs.items())):
        local = {e["round"]: e.get("local") or 0 for e in events}
        heights = [local.get(r, 0) for r in rounds]
        ax.bar(
            rounds,
            heights,
            bottom=[bottom[r] for r in rounds],
            color=f"C{i % 10}",
            label=f"{data.labels.get(name, name)}'s",
            width=0.8,
        )
        for r, h in zip(rounds, heights):
            bottom[r] += h
    total = {}
    for events in data.logs.values():
        for e in events:
            total[e["round"]] = max(total.get(e["round"], 0), e.get("contributions") or 0)
    ax.plot(rounds, [total.get(r, 0) for r in rounds], "k.-", linewidth=1, label="applied (all peers)")
    ax.set_title("contributions per round")
    ax.set_xlabel("round")
    ax.set_ylabel("contributions")
    ax.legend(fontsize=8)
    return True


def _latency(ax, data: RunData) -> bool:
    drawn = False
    for i, (name, events) in enumerate(sorted(data.logs.items())):
        lat = [(e["round"], e["latency_seconds"]) for e in events if isinstance(e.get("latency_seconds"), (int, float))]
        app = [(e["round"], e["apply_seconds"]) for e in events if isinstance(e.get("apply_seconds"), (int, float))]
        label = data.labels.get(name, name)
        if lat:
            ax.plot(*zip(*lat), color=f"C{i % 10}", label=f"{label} close -> applied")
            drawn = True
        if app:
            ax.plot(*zip(*app), ":", color=f"C{i % 10}", label=f"{label} apply")
            drawn = True
    ax.set_title("round latency")
    ax.set_xlabel("round")
    ax.set_ylabel("seconds")
    if drawn:
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    return drawn


def _bytes(ax, data: RunData) -> bool:
    per_round = {}
    for name, events in data.logs.items():
        pts = []
        for e in events:
            b = sum(e.get(k) or 0 for k in ("bytes_sent", "bytes_received")) or e.get("wire_bytes")
            if b and e.get("contributions"):
                pts.append((e["round"], b / e["contributions"]))
        if pts:
            per_round[name] = pts
    if per_round:
        for i, (name, pts) in enumerate(sorted(per_round.items())):
            ax.plot(*zip(*pts), color=f"C{i % 10}", label=data.labels.get(name, name))
        ax.set_xlabel("round")
        ax.legend(fontsize=8)
    elif data.bytes_runs:
        runs = data.bytes_runs
        labels = [
            f"{r.get('n')} peers\nK={r.get('k')}" + (f"\nlean {r['lean_replicas']}" if r.get("lean_replicas") else "")
            for r in runs
        ]
        values = [r["bytes_per_contribution"] for r in runs]
        bars = ax.bar(range(len(runs)), values, color="C0")
        ax.set_xticks(range(len(runs)), labels, fontsize=8)
        for b, v in zip(bars, values):
            ax.annotate(
                f"{v:.0f} B",
                (b.get_x() + b.get_width() / 2, v),
                textcoords="offset points",
                xytext=(0, 3),
                ha="center",
                fontsize=8,
            )
    else:
        return False
    ax.set_title("bytes on the wire per contribution")
    ax.set_ylabel("bytes")
    return True


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot(inputs: list[str | Path], out_dir: str | Path, title: str | None = None, smooth: int = 5) -> list[Path]:
    """Write the charts the inputs have data for into ``out_dir``; return their paths."""
    data = load(inputs)
    if not (data.logs or data.evals or data.bytes_runs):
        raise ValueError(
            f"nothing to plot in {', '.join(map(str, inputs))}: no applied rounds, evaluations or wire_bytes runs"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    single = {
        "loss.png": lambda ax: _loss(ax, data, smooth),
        "accuracy.png": lambda ax: _accuracy(ax, data),
        "contributions.png": lambda ax: _contributions(ax, data),
        "latency.png": lambda ax: _latency(ax, data),
        "bytes.png": lambda ax: _bytes(ax, data),
    }
    for name, draw in single.items():
        fig = Figure(figsize=(7, 4))
        if draw(fig.add_subplot()):
            written.append(_save(fig, out / name))
    panels = [draw for name, draw in single.items() if name != "bytes.png" and (out / name) in written]
    if panels:
        fig = Figure(figsize=(13, 8.5))
        rows = 2 if len(panels) > 2 else 1
        cols = 2 if len(panels) > 1 else 1
        for i, draw in enumerate(panels):
            draw(fig.add_subplot(rows, cols, i + 1))
        heading = title or data.title
        if heading:
            fig.suptitle(heading)
        written.append(_save(fig, out / "overview.png"))
    return written
