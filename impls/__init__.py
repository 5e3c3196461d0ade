"""Built-in fusions: one sub-package per fusion, the same file names in each.

`impls/<fusion>/__init__.py` holds the spec (a `SPEC` FusionSpec); `cpu.py`, `cuda.py`
and `wgsl.py` hold the fused kernels, discovered by file name (harness.registry).
"""
