"""The wheel ships every file fusebench reads at run time besides its Python modules: the
kernel sources (impls/*/*.cu, *.wgsl), the fragments harness.splice splices into them
(harness/kernels/*), the report templates and the case files. Built offline from a copy of
the tree (setuptools builds in place, so build/ and *.egg-info land in the copy, not here)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from harness.splice import _SPLICE

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("harness", "impls", "cases")
LITTER = ("build", "fusebench.egg-info", "dist")


def _files(root: Path, pattern: str) -> set[str]:
    """Paths (relative to the repository, with /) of the files matching `pattern`."""
    return {p.relative_to(ROOT).as_posix() for p in root.glob(pattern)
            if p.is_file() and "__pycache__" not in p.parts}


def kernel_sources() -> set[str]:
    return _files(ROOT / "impls", "*/*.cu") | _files(ROOT / "impls", "*/*.wgsl")


def spliced_fragments() -> dict[str, set[str]]:
    """Fragment name -> the files that splice it: the kernel sources, the chain's sources in
    harness/kernels (fb_chain_matmul.wgsl splices fb_tile.wgsl) and any Python."""
    found: dict[str, set[str]] = {}
    for rel in sorted(kernel_sources() | _files(ROOT / "harness", "**/*.py") | _files(ROOT / "impls", "**/*.py")
                      | _files(ROOT / "harness" / "kernels", "*")):
        for name in _SPLICE.findall((ROOT / rel).read_text(encoding="utf-8")):
            found.setdefault(name, set()).add(rel)
    return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    before = {name: (ROOT / name).exists() for name in LITTER}
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                        "--no-index", "--disable-pip-version-check", "-q", "-w", str(tmp / "dist")],
                       cwd=tmp, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert {name: (ROOT / name).exists() for name in LITTER} == before, "the build wrote into the repository"
    (whl,) = (tmp / "dist").glob("fusebench-*.whl")
    return whl


@pytest.fixture(scope="module")
def names(wheel) -> set[str]:
    with zipfile.ZipFile(wheel) as z:
        return set(z.namelist())


def test_wheel_holds_every_kernel_source_fragment_template_and_case_file(names):
    expected = (_files(ROOT / "harness" / "kernels", "**/*") | _files(ROOT / "harness" / "templates", "**/*")
                | kernel_sources() | _files(ROOT / "cases", "*.toml"))
    assert {"harness/kernels/fb_tile.wgsl", "harness/kernels/fb_prelude.cuh",
            "harness/templates/report.html.j2"} <= expected  # the globs above found the tree
    assert sorted(expected - names) == []


def test_wheel_holds_every_spliced_fragment(names):
    fragments = spliced_fragments()
    assert {"fb_tile.wgsl", "fb_rms_matmul.wgsl", "fb_prelude.cuh"} <= set(fragments)
    missing = {name: sorted(users) for name, users in fragments.items() if f"harness/kernels/{name}" not in names}
    assert missing == {}, f"fragments spliced by these files are not in the wheel: {missing}"


def test_installed_wheel_splices_every_kernel_source(wheel, tmp_path):
    """From the unzipped wheel alone (no site-packages, so no editable install of this
    checkout; cwd outside the repository), every kernel source and every other file that
    splices a fragment (the chain's sources in harness/kernels) gets its fragments."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    users = sorted({u for us in spliced_fragments().values() for u in us} - kernel_sources())
    code = """
import json, sys
from pathlib import Path
import harness, harness.splice as s
site = Path(sys.argv[1]).resolve()
assert Path(harness.__file__).resolve().is_relative_to(site), harness.__file__
sources = sorted([*site.glob("impls/*/*.cu"), *site.glob("impls/*/*.wgsl")])
done = {}
for p in sources:
    done[p.relative_to(site).as_posix()] = len(s.spliced_source(p))
for rel in json.loads(sys.argv[2]):  # the chain's sources and any module with a splice line
    done[rel] = len(s.splice((site / rel).read_text(), rel) if rel.endswith(".py") else s.spliced_source(site / rel))
print(json.dumps(done))
"""
    r = subprocess.run([sys.executable, "-S", "-c", code, str(site), json.dumps(users)], cwd=elsewhere,
                       env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    done = json.loads(r.stdout)
    assert set(done) == kernel_sources() | set(users)
    assert users and all(n > 0 for n in done.values())
