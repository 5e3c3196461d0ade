"""Kernel code shared by several sources, kept once in harness/kernels/.

A CUDA (.cu) or WGSL (.wgsl) source names a fragment with a line of its own,
`//@fusebench-splice NAME` (NAME a file in harness/kernels/, e.g. fb_prelude.cuh or
fb_tile.wgsl), and `spliced_source(path)` returns the text with each such line replaced by
the fragment. What the compilers receive is that text, free of #include (WGSL has none).
"""

from __future__ import annotations

import re
from pathlib import Path

KERNELS_DIR = Path(__file__).resolve().parent / "kernels"
_SPLICE = re.compile(r"^//@fusebench-splice ([\w.\-]+)[ \t]*$", re.M)


def splice(text: str, where: str = "<source>") -> str:
    """`text` with its `//@fusebench-splice NAME` lines replaced by the fragments' text."""

    def fragment(m: re.Match) -> str:
        frag = KERNELS_DIR / m.group(1)
        if not frag.is_file():
            raise FileNotFoundError(f"{where}: spliced fragment {m.group(1)!r} not found in {KERNELS_DIR}")
        return frag.read_text().rstrip("\n")

    return _SPLICE.sub(fragment, text)


def spliced_source(path: str | Path) -> str:
    """The text of a kernel source file with its fragments spliced in."""
    return splice(Path(path).read_text(), str(path))
