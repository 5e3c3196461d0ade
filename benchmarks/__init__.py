"""The asv suite of fusebench, generated from the registry (see benchmarks/fusions.py).

asv imports this package from `benchmark_dir` without putting the repository on
sys.path. The harness, the kernels and the case files measured are those of the checkout
named by $FUSEBENCH_ASV_ROOT (`python -m harness.asv_suite history` points it at a
worktree of each commit), else of the repository this folder sits in.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(os.environ.get("FUSEBENCH_ASV_ROOT") or Path(__file__).resolve().parent.parent).resolve()
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import harness  # noqa: E402

if Path(harness.__file__).resolve().parent.parent != ROOT:
    # Measuring another checkout's kernels under this commit's name would be silently wrong.
    raise ImportError(f"the asv suite wants the harness of {ROOT}, but harness was already imported from "
                      f"{Path(harness.__file__).resolve().parent}")
