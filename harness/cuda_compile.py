"""Compile the CUDA sources without a GPU: nvcc when it is on PATH, else NVRTC from pip.

`compile_cuda_source(path) -> (ok, log)` compiles one .cu file to PTX for sm_90;
`compile_to_ptx(...)` returns the PTX too, so that callers can check which kernels it
defines (`ptx_entries`) and the most threads each accepts (`ptx_max_threads`, from
__launch_bounds__). `ptxas_usage(...)` compiles to a sm_90 cubin with `-Xptxas -v` and
returns each kernel's registers and static shared memory as ptxas reports them.
`cuda_sources()` lists every `impls/*/*.cu`.

Neither path needs a GPU or a driver: nvcc runs `nvcc --ptx -arch=sm_90`, NVRTC (from
`pip install 'fusebench[nvrtc]'`: cuda-toolkit[nvrtc] + cuda-bindings) compiles with
`-arch=compute_90`. The sources are header-free, so no include path is needed; the cudart
include directory is passed anyway when cuda.pathfinder finds it.

Code shared by several kernels lives once in `harness/kernels/*.cuh`; a `.cu` file names a
fragment with a line `//@fusebench-splice NAME.cuh`, and `cuda_source()` replaces that line
with the fragment's text (harness.splice). What nvcc, NVRTC and CuPy compile is that
spliced text, still free of #include.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from harness.splice import spliced_source

REPO_ROOT = Path(__file__).resolve().parent.parent
ARCH = "90"
NO_COMPILER = "no CUDA compiler: install nvcc or pip install 'fusebench[nvrtc]'"
COMPILERS = ("nvcc", "nvrtc")


@dataclass
class CompileResult:
    ok: bool
    log: str
    ptx: str = ""
    compiler: str = ""
    seconds: float = 0.0

    def entries(self) -> set[str]:
        return ptx_entries(self.ptx)


def cuda_source(path: str | Path) -> str:
    """The text of a .cu file with its `//@fusebench-splice NAME` lines replaced by the
    shared fragments from harness/kernels/ (the text every compiler and CuPy receives)."""
    return spliced_source(path)


def cuda_sources(root: Path | None = None) -> list[Path]:
    """Every `impls/<fusion>/*.cu`, sorted."""
    root = Path(root) if root is not None else REPO_ROOT
    return sorted((root / "impls").glob("*/*.cu"))


def ptx_entries(ptx: str) -> set[str]:
    """Names of the kernels (`.entry`) a PTX module defines."""
    return set(re.findall(r"\.entry\s+([A-Za-z_$][\w$]*)\s*\(", ptx))


def ptx_max_threads(ptx: str) -> dict[str, int]:
    """Kernel name -> the most threads per block it may be launched with (`.maxntid x, y, z`
    from __launch_bounds__), for the kernels that declare one."""
    found = re.findall(r"\.entry\s+([A-Za-z_$][\w$]*)\s*\([^)]*\)\s*\.maxntid\s+(\d+)\s*,\s*(\d+)\s*,\s*(\d+)", ptx)
    return {name: int(x) * int(y) * int(z) for name, x, y, z in found}


class PtxasUsage(NamedTuple):
    """What ptxas says one kernel needs: registers per thread, static shared memory (bytes)."""

    registers: int
    static_smem: int


def parse_ptxas_log(log: str) -> dict[str, PtxasUsage]:
    """Kernel name -> PtxasUsage from the `-Xptxas -v` lines ("Compiling entry function 'k'"
    then "Used 40 registers, used 1 barriers, 32 bytes smem")."""
    out, current = {}, None
    for line in log.splitlines():
        entry = re.search(r"Compiling entry function '([^']+)'", line)
        if entry:
            current = entry.group(1)
            continue
        used = re.search(r"Used (\d+) registers", line)
        if used and current:
            smem = re.search(r"(\d+) bytes smem", line)
            out[current] = PtxasUsage(int(used.group(1)), int(smem.group(1)) if smem else 0)
            current = None
    return out


def nvcc_path() -> str | None:
    return shutil.which("nvcc")


def nvrtc_available() -> tuple[bool, str]:
    try:
        from cuda.bindings import nvrtc

        err, major, minor = nvrtc.nvrtcVersion()
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            return False, f"nvrtcVersion failed: {err}"
        return True, f"NVRTC {major}.{minor}"
    except Exception as e:  # ImportError, or the shared library not found
        return False, f"{type(e).__name__}: {e}"


def available_compilers() -> list[str]:
    out = []
    if nvcc_path():
        out.append("nvcc")
    if nvrtc_available()[0]:
        out.append("nvrtc")
    return out


def _cudart_include() -> str | None:
    try:
        from cuda import pathfinder

        return pathfinder.find_nvidia_header_directory("cudart")
    except Exception:
        return None


def _compile_nvcc(source: str, name: str, cubin: bool = False) -> CompileResult:
    """PTX (ptx empty when `cubin`: a sm_90 cubin with ptxas's resource lines in the log)."""
    nvcc = nvcc_path()
    with tempfile.TemporaryDirectory(prefix="fusebench-nvcc-") as tmp:
        src = Path(tmp) / (Path(name).stem + ".cu")
        out = Path(tmp) / ("out.cubin" if cubin else "out.ptx")
        src.write_text(source)
        mode = ["--cubin", "-Xptxas", "-v"] if cubin else ["--ptx"]
        cmd = [nvcc, *mode, f"-arch=sm_{ARCH}", "-std=c++17", "-o", str(out), str(src)]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        dt = time.perf_counter() - t0
        log = (p.stdout + p.stderr).replace(str(src), name).strip()
        if p.returncode != 0 or not out.exists():
            return CompileResult(False, log or f"nvcc exited with {p.returncode}", "", "nvcc", dt)
        return CompileResult(True, log, "" if cubin else out.read_text(), "nvcc", dt)


def _compile_nvrtc(source: str, name: str, cubin: bool = False) -> CompileResult:
    """PTX (ptx empty when `cubin`: a sm_90 cubin with ptxas's resource lines in the log)."""
    from cuda.bindings import nvrtc

    ok_code = nvrtc.nvrtcResult.NVRTC_SUCCESS
    opts = [f"-arch=sm_{ARCH}".encode(), b"-Xptxas", b"-v"] if cubin else [f"-arch=compute_{ARCH}".encode()]
    opts.append(b"-std=c++17")
    inc = _cudart_include()
    if inc:
        opts.append(f"-I{inc}".encode())
    t0 = time.perf_counter()
    err, prog = nvrtc.nvrtcCreateProgram(source.encode(), name.encode(), 0, [], [])
    if err != ok_code:
        return CompileResult(False, f"nvrtcCreateProgram: {err}", "", "nvrtc", time.perf_counter() - t0)
    try:
        (cerr,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        dt = time.perf_counter() - t0
        err, size = nvrtc.nvrtcGetProgramLogSize(prog)
        log = b""
        if err == ok_code and size > 1:
            buf = b" " * size
            (err,) = nvrtc.nvrtcGetProgramLog(prog, buf)
            log = buf
        log_s = log.rstrip(b"\x00").decode(errors="replace").strip()
        if cerr != ok_code:
            return CompileResult(False, log_s or f"nvrtcCompileProgram: {cerr}", "", "nvrtc", dt)
        if cubin:
            return CompileResult(True, log_s, "", "nvrtc", dt)
        err, size = nvrtc.nvrtcGetPTXSize(prog)
        if err != ok_code:
            return CompileResult(False, f"nvrtcGetPTXSize: {err}", "", "nvrtc", dt)
        buf = b" " * size
        (err,) = nvrtc.nvrtcGetPTX(prog, buf)
        if err != ok_code:
            return CompileResult(False, f"nvrtcGetPTX: {err}", "", "nvrtc", dt)
        return CompileResult(True, log_s, buf.rstrip(b"\x00").decode(), "nvrtc", dt)
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def compile_to_ptx(source: str, name: str = "source.cu", compiler: str | None = None,
                   cubin: bool = False) -> CompileResult:
    """Compile CUDA C++ text to PTX for sm_90. `compiler`: "nvcc", "nvrtc" or None (nvcc
    when on PATH, else NVRTC). Never raises for a bad source: ok=False with the log.
    `cubin`: compile to a sm_90 cubin through ptxas instead, `-Xptxas -v`: no PTX, ptxas's
    resource report in the log (parse_ptxas_log)."""
    if compiler is None:
        found = available_compilers()
        if not found:
            return CompileResult(False, NO_COMPILER)
        compiler = found[0]
    if compiler == "nvcc":
        if not nvcc_path():
            return CompileResult(False, "nvcc is not on PATH", compiler="nvcc")
        return _compile_nvcc(source, name, cubin)
    if compiler == "nvrtc":
        ok, why = nvrtc_available()
        if not ok:
            return CompileResult(False, f"NVRTC is unavailable ({why}); pip install 'fusebench[nvrtc]'",
                                 compiler="nvrtc")
        return _compile_nvrtc(source, name, cubin)
    raise ValueError(f"unknown compiler {compiler!r}; expected one of {COMPILERS}")


def compile_cuda_source(path, compiler: str | None = None) -> tuple[bool, str]:
    """(ok, log) for one .cu file compiled to PTX for sm_90."""
    path = Path(path)
    r = compile_to_ptx(cuda_source(path), path.name, compiler)
    return r.ok, r.log


def ptxas_usage(path, compiler: str | None = None) -> tuple[CompileResult, dict[str, PtxasUsage]]:
    """One .cu file compiled to a sm_90 cubin with `-Xptxas -v`: the result (ok, log) and each
    kernel's registers and static shared memory as ptxas reports them."""
    path = Path(path)
    r = compile_to_ptx(cuda_source(path), path.name, compiler, cubin=True)
    return r, parse_ptxas_log(r.log) if r.ok else {}


def check_entries(path, expected, compiler: str | None = None) -> tuple[bool, str]:
    """(ok, message): the file compiles and its PTX defines every kernel in `expected`."""
    path = Path(path)
    r = compile_to_ptx(cuda_source(path), path.name, compiler)
    if not r.ok:
        return False, r.log
    missing = sorted(set(expected) - r.entries())
    if missing:
        return False, f"{path.name}: kernels missing from the PTX: {', '.join(missing)}"
    return True, ""


if __name__ == "__main__":  # python -m harness.cuda_compile: compile every source
    import sys

    bad = 0
    for src in cuda_sources():
        for comp in available_compilers() or [None]:
            r = compile_to_ptx(cuda_source(src), src.name, comp)
            status = "ok" if r.ok else "FAILED"
            print(f"{src.relative_to(REPO_ROOT)} [{r.compiler or '-'}] {status} {r.seconds:.2f}s "
                  f"{len(r.entries())} kernels")
            if not r.ok:
                bad += 1
                print(r.log, file=sys.stderr)
    sys.exit(1 if bad else 0)
