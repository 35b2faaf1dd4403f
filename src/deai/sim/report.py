"""The simulator's report on a terminal (rich tables) and on disk (JSON, PNG)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def _n(x: float | None, fmt: str = ",.0f") -> str:
    return "–" if x is None else format(x, fmt)


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.2%}"


def write(report: dict[str, Any], out: Path) -> list[Path]:
    """``report.json`` and ``detection_vs_overhead.png`` under ``out``."""
    from deai.sim.plot import detection_vs_overhead

    out.mkdir(parents=True, exist_ok=True)
    js = out / "report.json"
    js.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    png = detection_vs_overhead(report["sweep"], out / "detection_vs_overhead.png")
    return [js, png]


def show(r: dict[str, Any], console: Console) -> None:
    net, h = r["network"], r["honest"]
    console.print(
        f"[bold]network[/]: {r['plan']['providers']:,} providers, {net['real_tasks']:,} real "
        f"tasks in {net['steps']} steps; overhead {_pct(net['overhead'])} "
        f"(honest subjects {_pct(net['honest_overhead'])}: a young network, mostly bootstrap); "
        f"{net['escalations']:,} referee calls {net['faults']}; largest task a "
        f"{r['world']['stake'] / 1e6:g}-DEAI stake may take (stake_for): "
        f"{net['max_task_value']:,} µ")
    t = Table("type", "slots", "identities", "cheated", "caught", "detection",
              "stood after\nwindow",
              "tasks to detection\nmean / p50 / p99", "closed form\nmean at floor",
              "bad accepted\n(per identity)", title="detection per cheater type")
    for row in net["types"]:
        if "caught" not in row:
            continue
        q = row["tasks_to_detection"]
        t.add_row(row["type"], str(row["slots"]), str(row["identities"]), str(row["cheated"]),
                  str(row["caught"]), _pct(row["detection_rate"]), f"{row['standing']:,}",
                  f"{_n(q['mean'], '.1f')} / {_n(q['p50'])} / {_n(q['p99'])}",
                  _n(row["floor_mean_tasks_to_detection"]),
                  f"{row['bad_accepted']} ({row['bad_accepted_per_identity']:.2f})")
    console.print(t)

    t = Table("type", "tasks", "profit µ/task", "vs honest µ/task",
              "closed form µ/cheated task", title="profit at the default stake "
              "(earnings + bounties − compute − slashes − forfeits)")
    for row in net["types"]:
        t.add_row(row["type"], f"{row['tasks']:,}", _n(row["profit_per_task"], "+,.0f"),
                  _n(row.get("excess_profit_per_task"), "+,.0f"),
                  _n(row.get("floor_expected_profit_per_cheat"), "+,.0f"))
    console.print(t)

    t = Table("run", "cheaters", "caught ≤ 1,000", "closed form", "tasks to detection\n"
              "mean / p50 / p99", "bad accepted\nper cheater", title="f = 0.1 cheaters")
    for key, label in (("detection_established", "established, own tasks only (target)"),
                       ("detection_replicas", "established, cheats on replicas too"),
                       ("detection_fresh", "fresh identity")):
        d = r[key]
        q = d["tasks_to_detection"]
        t.add_row(label, f"{d['cheaters']:,}", f"{d['caught_within']:.2%} ± {d['stderr']:.2%}",
                  _pct(d["floor_p_caught_within"]),
                  f"{_n(q['mean'], '.1f')} / {_n(q['p50'])} / {_n(q['p99'])}",
                  f"{d['bad_accepted_per_cheater']:.1f}")
    console.print(t)
    t = Table("class", "leak", "window\nlook-back", "cheaters / providers", "caught ≤ horizon",
              "caught by",
              "tasks to detection\nmean / p99", "wrong accepted\nper cheater",
              "corrected", "stood after\nwindow", "reachable\nat end", "honest\nslashed",
              title="adversary classes (established identities, no churn)")
    for c in r["classes"]:
        q = c["tasks_to_detection"]
        t.add_row(c["class"], f"{c['leak']:g}", f"{c['window']:,} {c['look_back']}",
                  f"{c['cheaters']:,} / {c['providers']:,}",
                  f"{c['caught_within']:.2%} ≤ {c['horizon']:,}",
                  ", ".join(f"{k} {v}" for k, v in c["caught_by"].items()),
                  f"{_n(q['mean'], '.1f')} / {_n(q['p99'])}",
                  f"{c['bad_accepted_per_cheater']:.1f}", f"{c['corrected']:,}",
                  f"{c['standing']:,}", f"{c['reachable_at_end']:,}", str(c["honest_slashed"]))
    console.print(t)
    console.print(
        f"network run: {net['bad_accepted']:,} wrong results accepted provisionally, "
        f"{net['corrected']:,} corrected by audits and look-back, {net['standing']:,} stood "
        f"after the window beyond any look-back's reach ({r['world']['look_back']}), "
        f"{net['reachable_at_end']:,} past the window of providers not caught by the end "
        f"(within reach), {net['provisional_at_end']:,} still in the window at the end; "
        f"look-back re-runs {net['look_back_overhead']:.2%} of useful compute; "
        f"{net['audits']:,} audits, {net['forced_errors']:,} forced errors, "
        f"{net['no_checker']:,} checks that found no eligible checker")
    console.print(
        f"[bold]honest only[/]: {h['honest_tasks']:,} tasks on {h['providers']:,} providers, "
        f"{h['honest_slashed']} slashed, {h['escalations']} mismatches all cleared by the "
        f"referee: {h['escalations_cleared'] == h['escalations']}; overhead over the whole run "
        f"{_pct(h['overhead_total'])}, steady state {h['overhead_steady']:.3%} "
        f"(as drawn {_pct(h['overhead_steady_drawn'])}; formula {h['formula']:.3%})")

    t = Table("q", "ρ_min", "overhead", "formula", "caught ≤ 1,000 (f = 0.1)", "closed form",
              title="sweep: detection against overhead")
    for s in r["sweep"]:
        t.add_row(f"{s['q']:g}", f"{s['rho_min']:g}", f"{s['overhead']:.2%}",
                  f"{s['formula_overhead']:.2%}", _pct(s["detection"]),
                  _pct(s["floor_detection"]))
    console.print(t)

    t = Table("target", "figure", "", title="targets")
    for tg in r["targets"]:
        t.add_row(tg["target"], tg["value"],
                  "[green]PASS[/]" if tg["pass"] else "[red]FAIL[/]")
    console.print(t)
    secs = r["seconds"]
    console.print("seconds: " + ", ".join(f"{k} {v:g}" for k, v in secs.items()))
