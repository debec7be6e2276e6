"""Memory of the packed serial groups' FlexAttention mask as trainers/packing.py builds it
(`create_block_mask(..., _compile=False)`, which evaluates the mask rule densely), per (query, key) pair.

    python bench/flex_mask_memory.py            # packed lengths 2048, 4096, 8192 on the CPU, one fresh process each

Each length runs in its own process and reports its peak RSS growth (ru_maxrss) over building one BlockMask of one
packed sequence (a thought of 3/4 of L and 8 exit branches); bytes / L^2 is what planning/memory.py charges as
FLEX_DENSE_MASK_BYTES. On a GPU the same tensors are allocated on the device (nothing here needs one).
"""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def one(length: int) -> dict:
    import torch

    from trainers.packing import block_mask

    trunk, branches = 3 * length // 4, 8
    seg = torch.zeros(1, length, dtype=torch.long)
    vis = torch.full((1, length), length, dtype=torch.long)
    per = (length - trunk) // branches
    for b in range(branches):  # branch b+1 sees the trunk up to its cut
        seg[0, trunk + b * per: trunk + (b + 1) * per] = b + 1
        vis[0, trunk + b * per: trunk + (b + 1) * per] = (b + 1) * trunk // (branches + 1)
    block_mask(SimpleNamespace(segment=seg[:, :64].clone(), visible=vis[:, :64].clone()))  # imports, warm-up
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    block_mask(SimpleNamespace(segment=seg, visible=vis))
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return {"length": length, "peak_growth_mib": round(grown / 2**20, 1), "bytes_per_pair": round(grown / length**2, 1)}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        print(json.dumps(one(int(sys.argv[2]))))
        return
    import torch

    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, CPU, 1 thread per process")
    print("| packed length L | peak RSS growth (MiB) | bytes per (query, key) pair |")
    print("|---|---|---|")
    for length in (2048, 4096, 8192):
        out = subprocess.run([sys.executable, __file__, "--one", str(length)], capture_output=True, text=True,
                             env={"OMP_NUM_THREADS": "1", "PATH": ""}, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {r['length']} | {r['peak_growth_mib']} | {r['bytes_per_pair']} |")


if __name__ == "__main__":
    main()
