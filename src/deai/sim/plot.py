"""Detection against overhead, one line per ρ_min across canary shares q, to a PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deai.core.verify.params import VerifyParams


def detection_vs_overhead(sweep: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for r in sorted({s["rho_min"] for s in sweep}):
        pts = sorted((s for s in sweep if s["rho_min"] == r), key=lambda s: s["q"])
        x = [100 * s["overhead"] for s in pts]
        ax.plot(x, [100 * s["detection"] for s in pts], "o-", label=f"ρ_min = {r:g}")
        ax.plot(x, [100 * s["floor_detection"] for s in pts], ":", color="grey", lw=0.8)
        for s, xi in zip(pts, x, strict=True):
            if s["detection"] >= 0.999:  # the crowd at the top says nothing new
                continue
            ax.annotate(f"q={s['q']:g}", (xi, 100 * s["detection"]), fontsize=7,
                        xytext=(3, -9), textcoords="offset points")
    d = VerifyParams()
    default = [s for s in sweep if (s["q"], s["rho_min"]) == (d.canary_share, d.rho_min)]
    for s in default:
        ax.plot([100 * s["overhead"]], [100 * s["detection"]], "*", ms=14, color="black",
                label=f"default (q = {d.canary_share:g}, ρ_min = {d.rho_min:g})")
    ax.axvline(5, color="red", lw=0.8, ls="--", label="overhead target 5%")
    ax.axhline(99, color="green", lw=0.8, ls="--", label="detection target 99%")
    ax.set_xlabel("steady-state verification overhead, % of useful compute")
    ax.set_ylabel("f = 0.1 cheaters caught within 1,000 tasks, %")
    ax.set_title("Detection against overhead (dotted: closed form)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
