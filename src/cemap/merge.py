"""``python -m cemap.merge SHARD_DIR... --out DIR``: join the shards of one map into the unsharded map.

Each shard is a run of ``python -m cemap.run ... cem.shard=i/n`` (for example a Hydra multirun over
``cem.shard=0/3,1/3,2/3`` on a SLURM cluster with ``hydra/launcher=submitit_slurm``). A result folder holds
``cem.npz`` (or ``roi<k>/cem.npz`` per ROI); the merged folders mirror that layout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cemap import results
from cemap.figures import save_map_figure
from cemap.results import CEMResult, merge_shards
from cemap.stats import summarize
from cemap.validation import SettingError


def merge_dirs(shard_dirs: list[Path], out: Path) -> list[dict]:
    """Merge every ROI folder that all shards share; returns one summary per merged map."""
    layouts = [sorted(p.parent.relative_to(d) for p in d.rglob(results.RESULT_ARRAYS)) for d in shard_dirs]
    common = sorted(set(layouts[0]).intersection(*map(set, layouts[1:])))
    if not common:
        raise SettingError("the shard folders share no result (cem.npz)")
    summaries = []
    for rel in common:
        merged = merge_shards([CEMResult.load(d / rel) for d in shard_dirs])
        merged.save(out / rel)
        save_map_figure(merged, out / rel / results.FIGURE)
        summaries.append({"roi": str(rel), **summarize(merged)})
    results.atomic_write_json(out / results.SUMMARY, summaries)
    return summaries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shards", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    try:
        summaries = merge_dirs(args.shards, args.out)
    except (ValueError, OSError) as exc:
        print(f"cemap.merge: error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(summaries[0] if len(summaries) == 1 else summaries, default=float))


if __name__ == "__main__":
    main()
