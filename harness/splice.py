"""Kernel code shared by several sources, kept once in harness/kernels/.

A CUDA (.cu) or WGSL (.wgsl) source names a fragment with a line of its own,
`//@fusebench-splice NAME` (NAME a file in harness/kernels/, e.g. fb_prelude.cuh or
fb_tile.wgsl), and `spliced_source(path)` returns the text with each such line replaced by
the fragment. What the compilers receive is that text, free of #include (WGSL has none).

A kernel file holding several kernels or pieces of one (the WGSL chain's,
harness/kernels/fb_chain_*.wgsl) divides them with lines `//@fusebench-section NAME`;
`kernel_sections(FILE)` reads it once per process, splices it, and returns NAME -> text.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

KERNELS_DIR = Path(__file__).resolve().parent / "kernels"
_SPLICE = re.compile(r"^//@fusebench-splice ([\w.\-]+)[ \t]*$", re.M)
_SECTION = re.compile(r"^//@fusebench-section ([\w.\-]+)[ \t]*\n", re.M)


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


def sections(text: str, where: str = "<source>") -> dict[str, str]:
    """`text` divided at its `//@fusebench-section NAME` lines: NAME -> the lines up to the
    next such line, trailing blank lines dropped. What precedes the first (the file's heading
    comment) belongs to no section. A NAME given twice is an error."""
    parts = _SECTION.split(text)
    out: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2]):
        if name in out:
            raise ValueError(f"{where}: section {name!r} given twice")
        out[name] = body.rstrip() + "\n"
    return out


@functools.cache
def kernel_sections(name: str) -> Mapping[str, str]:
    """The sections of harness/kernels/NAME, fragments spliced in; read once per process."""
    path = KERNELS_DIR / name
    return MappingProxyType(sections(spliced_source(path), str(path)))
