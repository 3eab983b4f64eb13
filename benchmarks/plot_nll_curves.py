"""Validation NLL against wall-clock minutes of `fastvae train --recipe` runs, from their metrics.

    python benchmarks/plot_nll_curves.py RUN_DIR[=LABEL] ... --out curves.png [--anchor 87.10=IWAE k=50, paper]

Reads the ``test_log_likelihood`` records (``--ll-every``) of each run's metrics.jsonl; a final
``fastvae eval --json`` result saved as RUN_DIR/eval.json is drawn as a star at the run's end.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories, optionally RUN=LABEL")
    p.add_argument("--out", required=True, help="PNG to write")
    p.add_argument("--anchor", action="append", default=[], help="VALUE=LABEL horizontal reference line (nats)")
    args = p.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for spec in args.runs:
        run, _, label = spec.partition("=")
        records = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines() if line]
        points = [(r["time"] / 60, -r["test_log_likelihood"]) for r in records if "test_log_likelihood" in r
                  and "time" in r]
        k = next((r.get("eval_samples") for r in records if r.get("kind") == "final"), None)
        line, = ax.plot(*zip(*points), "o-", ms=3, label=f"{label or run} (IS, K={k or 'see run'})")
        final = Path(run) / "eval.json"
        if final.is_file() and points:
            result = json.loads(final.read_text())
            ax.plot([points[-1][0]], [result["nll"]], "*", ms=12, color=line.get_color(),
                    label=f"{label or run}: {result['nll']:.2f} (K={result['num_samples']}, "
                          f"{result['examples']} {result.get('split', 'test')})")
    for spec in args.anchor:
        value, _, label = spec.partition("=")
        ax.axhline(float(value), ls="--", lw=0.8, color="grey")
        ax.text(0.5, float(value), f" {label or value}", va="bottom", fontsize=8, color="grey")
    ax.set_xlabel("wall-clock minutes (training, evaluations included)")
    ax.set_ylabel("validation NLL (nats)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
