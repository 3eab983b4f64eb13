"""The plot beside a saved report: speed-up of the fused ops over eager and over torch.compile
against problem size (matplotlib, imported only here)."""
from __future__ import annotations

from typing import Dict, List, Tuple


def plot(report: Dict[str, object], path: str) -> None:
    """Speed-up of the fused ops over eager and over compile against problem size: colour per op,
    line style per dtype, marker per size family (lines join sizes of one family only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FormatStrFormatter

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    ops = sorted({r["op"] for r in report["results"]})
    colors = {op: plt.cm.tab10(i % 10) for i, op in enumerate(ops)}
    styles = {"float32": "-", "bfloat16": "--", "float16": ":", "float64": "-."}
    markers = {"mnist": "o", "short_rows": "s", "images": "^", "large": "D"}
    for ax, key, title in ((axes[0], "speedup_vs_eager", "vs eager"), (axes[1], "speedup_vs_compile", "vs torch.compile")):
        series: Dict[Tuple[str, str, str], List[Tuple[int, float]]] = {}
        for r in report["results"]:
            if r[key] is not None:
                series.setdefault((r["op"], r["dtype"], r.get("family", "")), []).append((r["elements"], r[key]))
        for (op, dtype, family), pts in sorted(series.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=markers.get(family, "x"), ms=4,
                    color=colors[op], ls=styles.get(dtype, "-"))
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            axis(FormatStrFormatter("%.1f"))
        ax.set_xlabel("B x D (elements of the largest operand)")
        ax.set_title(f"fused {title}", fontsize=10)
    axes[0].set_ylabel("speed-up, forward + backward (> 1: fused faster)")
    dtypes = sorted({r["dtype"] for r in report["results"]})
    families = [f for f in markers if any(r.get("family") == f for r in report["results"])]
    handles = ([Line2D([], [], color=colors[op], label=op) for op in ops]
               + [Line2D([], [], color="black", ls=styles.get(d, "-"), label=d) for d in dtypes]
               + [Line2D([], [], color="black", ls="", marker=markers[f], label=f) for f in families])
    env = report["environment"]
    fig.suptitle(f"fastvae on {env['device_type']}: {env['device']}, torch {env['torch']}, {env['time'][:10]}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.82, 1))
    if handles:
        fig.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(0.82, 0.5))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")
