"""Parameters and FLOPs of every architecture's canonical configuration at 1×3×512×512.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add counts
as 2 FLOPs; convolutions and matrix products only), in eval mode. 3D U-Net is counted on a
1×3×64×128×128 volume. Writes ``benchmarks/results/models.md`` and ``models.json``.

    python benchmarks/model_table.py
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import torch

from common import cpu_model
from pixelwise import list_models
from pixelwise.models.stats import canonical_stats

OUT = Path(__file__).parent / "results"


def main() -> None:
    torch.set_num_threads(2)
    rows = []
    for name in list_models():
        row = canonical_stats(name)
        rows.append(row)
        print(f"{name:18s} {row['params'] / 1e6:8.2f} M params {row['gflops']:9.1f} GFLOPs  ({row['input']})", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
            "machine": cpu_model()}
    (OUT / "models.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = ["# Canonical configurations: parameters and FLOPs", "",
             f"FlopCounterMode, eval, batch 1; {meta['date']}, torch {meta['torch']}.", "",
             "| model | params (M) | GFLOPs | input | configuration |", "|---|---:|---:|---|---|"]
    lines += [f"| `{r['model']}` | {r['params'] / 1e6:.2f} | {r['gflops']:.1f} | {r['input']} | `{r['config']}` |"
              for r in rows]
    (OUT / "models.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
