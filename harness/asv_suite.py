"""asv benchmark history for fusebench: run the asv suite (benchmarks/) over commits.

    python -m harness.asv_suite machine [--machine NAME]      asv's machine file, non-interactively
    python -m harness.asv_suite run [--quick] [-b RE]          this working tree, recorded as HEAD
    python -m harness.asv_suite history N [--publish]          the last N commits of HEAD
    python -m harness.asv_suite compare BASE NEW               both commits, then asv compare + fusebench compare
    python -m harness.asv_suite publish                        asv publish (the HTML history)

Everything runs offline in this interpreter (asv's "existing" environment, python
"same"): asv cannot install other commits into it, so `history` checks each commit out
as a git worktree under .asv/worktrees/<hash> (kept, so that numba's on-disk cache
survives between runs; `--prune` removes them) and runs
`asv run --set-commit-hash <hash>` with FUSEBENCH_ASV_ROOT pointing the suite at that
worktree: the harness, kernels and case files measured are the commit's, the benchmark
definitions are this checkout's benchmarks/ (so a commit from before the suite existed
is measured too, and every commit by the same rules).

Each measured record is also written, exactly as the suite saw it, to
<results_dir>/../fusebench/<hash>.jsonl (.asv/fusebench/ by default): a fusebench results
file for `fusebench report` and `fusebench compare`, with the same medians asv tracks.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "asv.conf.json"
OFFLINE_ASSETS = ROOT / "benchmarks" / "www"


class AsvError(RuntimeError):
    """A problem phrased for the user; exit status 2."""


def _git(*args: str, cwd: Path = ROOT) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        raise AsvError(f"git {' '.join(args)}: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout.strip()


def load_config(path: Path) -> dict:
    """asv.conf.json (comments allowed, as asv allows them), paths made absolute the way
    asv resolves them: relative to the folder of the config file."""
    from asv.util import load_json

    conf = load_json(str(path), js_comments=True)
    base = path.resolve().parent
    for key, default in (("results_dir", "results"), ("html_dir", "html"), ("benchmark_dir", "benchmarks")):
        conf[key] = str((base / conf.get(key, default)).resolve())
    conf["repo"] = str((base / conf.get("repo", ".")).resolve())
    return conf


def records_dir(conf: dict) -> Path:
    """Where the fusebench records of asv runs go: beside asv's results folder."""
    return Path(conf["results_dir"]).parent / "fusebench"


def _asv(args: list[str], config: Path, env: dict | None = None, check: bool = True) -> int:
    cmd = [sys.executable, "-m", "asv", *args, "--config", str(config)]
    print("+ " + " ".join(cmd), flush=True)
    code = subprocess.run(cmd, env=env).returncode
    if check and code != 0:
        raise AsvError(f"asv {args[0]} exited with status {code}")
    return code


def ensure_machine(machine: str | None, config: Path) -> None:
    """`asv machine --yes` unless ~/.asv-machine.json already knows this machine."""
    import json
    import socket

    path = Path.home() / ".asv-machine.json"
    known = {}
    if path.exists():
        try:
            known = json.loads(path.read_text())
        except ValueError:
            known = {}
    name = machine or socket.gethostname()
    if name in known or (machine is None and len([k for k in known if k != "version"]) == 1):
        return
    _asv(["machine", "--yes", *(["--machine", machine] if machine else [])], config)


def suite_env(args, root: Path | None = None, results: Path | None = None) -> dict:
    env = dict(os.environ)
    for var, value in (("FUSEBENCH_ASV_SUITE", args.suite), ("FUSEBENCH_ASV_BUDGET", args.budget),
                       ("FUSEBENCH_ASV_BACKENDS", args.backends)):
        if value is not None:
            env[var] = str(value)
    if root is not None:
        env["FUSEBENCH_ASV_ROOT"] = str(root)
    else:
        env.pop("FUSEBENCH_ASV_ROOT", None)
    if results is not None:
        env["FUSEBENCH_ASV_RESULTS"] = str(results)
    if not env.get("XDG_RUNTIME_DIR"):  # wgpu on lavapipe complains on stderr without one
        xdg = Path("/tmp") / f"fusebench-xdg-{os.getuid()}"
        xdg.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(xdg)
    return env


def _run_args(args, commit: str) -> list[str]:
    out = ["run", "--set-commit-hash", commit, "--python=same"]
    if args.machine:
        out += ["--machine", args.machine]
    if args.quick:
        out.append("--quick")
    if args.show_stderr:
        out.append("--show-stderr")
    for regex in args.bench or []:
        out += ["--bench", regex]
    return out


def worktree(commit: str, where: Path) -> Path:
    """A detached worktree of `commit` at where/<hash12>, reused when it is already there."""
    path = where / commit[:12]
    if (path / ".git").exists():
        if _git("rev-parse", "HEAD", cwd=path) != commit:
            _git("checkout", "--quiet", "--detach", commit, cwd=path)
        return path
    where.mkdir(parents=True, exist_ok=True)
    _git("worktree", "add", "--quiet", "--detach", str(path), commit)
    return path


def run_commit(args, config: Path, conf: dict, commit: str, root: Path | None) -> int:
    """One asv run recorded under `commit`; the suite measures the checkout at `root`
    (None: this working tree). Returns asv's exit status (non-zero: a benchmark failed)."""
    out = records_dir(conf) / f"{commit[:12]}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and not args.bench:
        out.unlink()  # a full run replaces the commit's records; a --bench subset adds to them
    print(f"== {commit[:12]} {_git('log', '-1', '--format=%s', commit)[:70]}", flush=True)
    return _asv(_run_args(args, commit), config, env=suite_env(args, root, out), check=False)


def commits_of(rev: str, n: int) -> list[str]:
    """The last n commits of rev along first parents, oldest first."""
    return list(reversed(_git("rev-list", "--first-parent", f"--max-count={n}", rev).split()))


def cmd_machine(args) -> int:
    ensure_machine(args.machine, args.config)
    return 0


def cmd_run(args) -> int:
    conf = load_config(args.config)
    ensure_machine(args.machine, args.config)
    commit = _git("rev-parse", args.commit)
    return 1 if run_commit(args, args.config, conf, commit, None) else 0


def _history(args, commits: list[str]) -> int:
    conf = load_config(args.config)
    ensure_machine(args.machine, args.config)
    where = Path(args.worktrees) if args.worktrees else Path(conf["results_dir"]).parent / "worktrees"
    failed = []
    made = []
    try:
        for commit in commits:
            path = worktree(commit, where.resolve())
            made.append(path)
            if run_commit(args, args.config, conf, commit, path):
                failed.append(commit[:12])
    finally:
        if args.prune:
            for path in made:
                _git("worktree", "remove", "--force", str(path))
    if args.publish:
        _asv(["publish"], args.config)
        print(f"history site: {Path(conf['html_dir']) / 'index.html'} (serve it: asv preview)")
    if failed:
        print(f"benchmarks failed for {', '.join(failed)} (asv run --show-stderr says why)", file=sys.stderr)
    return 1 if failed else 0


def cmd_history(args) -> int:
    if args.n < 1:
        raise AsvError("history needs N >= 1")
    return _history(args, commits_of(args.rev, args.n))


def cmd_compare(args) -> int:
    conf = load_config(args.config)
    base, new = _git("rev-parse", args.base), _git("rev-parse", args.new)
    status = 0
    if not args.no_run:
        status = _history(args, [base, new])
    _asv(["compare", "--split", "--only-changed", "--factor", str(args.factor), base, new,
          *(["--machine", args.machine] if args.machine else [])], args.config, check=False)
    files = [records_dir(conf) / f"{c[:12]}.jsonl" for c in (base, new)]
    if not all(f.exists() for f in files):
        print(f"no fusebench records for both commits in {records_dir(conf)}", file=sys.stderr)
        return status or 1
    cmd = [sys.executable, "-m", "harness.cli", "compare", *map(str, files)]
    print("+ " + " ".join(cmd), flush=True)
    return subprocess.run(cmd).returncode or status


def cmd_publish(args) -> int:
    conf = load_config(args.config)
    _asv(["publish"], args.config)
    print(f"history site: {Path(conf['html_dir']) / 'index.html'} (serve it: asv preview)")
    return 0


# --- the history site without a network -----------------------------------------------
#
# asv's index.html loads jQuery, flot, Bootstrap and four small libraries from CDNs; with
# no network the page shows only "external dependencies failed to load". asv.conf.json
# names this module as an asv plugin (".harness.asv_suite"), so that `asv publish` runs
# OfflineSite last: it copies jQuery and flot from this machine and benchmarks/www/
# (small stand-ins for the rest) into <html_dir>/offline/ and points index.html at them.
# FUSEBENCH_ASV_CDN=1 keeps asv's page as it is (zooming by selection and Bootstrap's
# look need the real libraries from the network).

def _first_file(candidates) -> Path | None:
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    return None


def _package_file(package: str, *parts: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)), *parts)


def find_jquery() -> Path | None:
    """jQuery on this machine: $FUSEBENCH_ASV_JQUERY, Debian's libjs-jquery, or the copy in
    sphinxcontrib-jquery."""
    return _first_file([os.environ.get("FUSEBENCH_ASV_JQUERY"), "/usr/share/javascript/jquery/jquery.min.js",
                        "/usr/share/javascript/jquery/jquery.js", _package_file("sphinxcontrib.jquery", "jquery.js")])


def find_flot() -> Path | None:
    """flot 0.8.3 (the version asv's page asks for): $FUSEBENCH_ASV_FLOT, or the copy inside
    pympler, which asv itself depends on."""
    return _first_file([os.environ.get("FUSEBENCH_ASV_FLOT"), _package_file("pympler", "templates", "jquery.flot.min.js")])


_REMOTE_SCRIPT = re.compile(r"""[ \t]*<script\b[^>]*\bsrc=["']?(?:https?:)?//[^>]*>\s*</script>[ \t]*\n?""", re.I)
_REMOTE_LINK = re.compile(r"""[ \t]*<link\b[^>]*\bhref=["']?(?:https?:)?//[^>]*>[ \t]*\n?""", re.I)
_LOCAL_SCRIPT = re.compile(r"""<script\b[^>]*\bsrc=["'](?!(?:https?:)?//)""", re.I)


def make_site_offline(html_dir: Path) -> tuple[bool, str]:
    """Point the published index.html at local copies of what it loads from CDNs.
    (done, what happened)."""
    index = Path(html_dir) / "index.html"
    if not index.is_file():
        return False, f"no {index}"
    jquery, flot = find_jquery(), find_flot()
    if jquery is None or flot is None:
        missing = " and ".join(n for n, p in (("jQuery", jquery), ("flot", flot)) if p is None)
        return False, (f"no local {missing} (apt-get install libjs-jquery; flot comes with asv's pympler): "
                       f"the site loads its libraries from CDNs")
    offline = Path(html_dir) / "offline"
    offline.mkdir(exist_ok=True)
    shutil.copyfile(jquery, offline / "jquery.js")
    shutil.copyfile(flot, offline / "jquery.flot.js")
    for asset in OFFLINE_ASSETS.iterdir():
        if asset.suffix in (".js", ".css"):
            shutil.copyfile(asset, offline / asset.name)
    text = index.read_text(encoding="utf-8")
    text = _REMOTE_LINK.sub("", _REMOTE_SCRIPT.sub("", text))
    block = ('<script src="offline/jquery.js"></script>\n'
             '    <script src="offline/jquery.flot.js"></script>\n'
             '    <script src="offline/fusebench-offline.js"></script>\n'
             '    <link rel="stylesheet" href="offline/fusebench-offline.css">\n    ')
    m = _LOCAL_SCRIPT.search(text)  # before the first local script (flot's axislabels plugin, asv.js)
    at = m.start() if m else text.lower().index("</head>")
    index.write_text(text[:at] + block + text[at:], encoding="utf-8")
    return True, f"offline site: jQuery from {jquery}, flot from {flot}"


try:
    from asv.publishing import OutputPublisher
except ImportError:  # asv is not installed: the commands above say so when they run it
    OutputPublisher = None

if OutputPublisher is not None:
    class OfflineSite(OutputPublisher):
        """asv publish step (last): the history site without CDNs; see make_site_offline."""

        name = "fusebench-offline"
        button_label = "offline"
        description = "local copies of the libraries asv's page loads from CDNs"
        order = math.inf

        @classmethod
        def publish(cls, conf, repo, benchmarks, graphs, revisions):
            from asv.console import log

            if os.environ.get("FUSEBENCH_ASV_CDN") == "1":
                log.info("FUSEBENCH_ASV_CDN=1: the site loads its libraries from CDNs")
                return
            done, what = make_site_offline(Path(conf.html_dir))
            (log.info if done else log.warning)(what)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m harness.asv_suite", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="asv config (default: the repository's)")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p, running: bool = True):
        p.add_argument("--machine", help="asv machine name (default: this host's name)")
        if not running:
            return
        p.add_argument("--quick", action="store_true", help="asv --quick (each benchmark once; the suite measures once anyway)")
        p.add_argument("-b", "--bench", action="append", help="asv --bench regex (repeatable)")
        p.add_argument("--suite", choices=("smoke", "quick", "full"), help="case suite (default smoke)")
        p.add_argument("--budget", type=float, help="seconds of timing samples per measurement (default 0.2)")
        p.add_argument("--backends", help="only these backends, comma-separated (others are skipped)")
        p.add_argument("--show-stderr", "-e", action="store_true", help="show the benchmarks' stderr")

    def history_opts(p):
        p.add_argument("--worktrees", help="where the commits are checked out (default .asv/worktrees)")
        p.add_argument("--prune", action="store_true", help="remove the worktrees afterwards (numba recompiles next time)")
        p.add_argument("--publish", action="store_true", help="asv publish afterwards")

    p = sub.add_parser("machine", help="write asv's machine file (~/.asv-machine.json) non-interactively")
    common(p, running=False)

    p = sub.add_parser("run", help="benchmark this working tree, recorded under a commit (default HEAD)")
    common(p)
    p.add_argument("--commit", default="HEAD", help="commit to record the results under (default HEAD)")

    p = sub.add_parser("history", help="benchmark the last N commits, each from its own worktree")
    p.add_argument("n", type=int, metavar="N")
    p.add_argument("--rev", default="HEAD", help="count back from this revision (default HEAD)")
    common(p)
    history_opts(p)

    p = sub.add_parser("compare", help="benchmark BASE and NEW, then asv compare and fusebench compare")
    p.add_argument("base", metavar="BASE")
    p.add_argument("new", metavar="NEW")
    p.add_argument("--factor", type=float, default=1.1, help="asv compare's ratio threshold (default 1.1)")
    p.add_argument("--no-run", action="store_true", help="compare existing results only")
    common(p)
    history_opts(p)

    p = sub.add_parser("publish", help="asv publish: the HTML history under .asv/html")
    return ap


COMMANDS = {"machine": cmd_machine, "run": cmd_run, "history": cmd_history, "compare": cmd_compare,
            "publish": cmd_publish}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.config = args.config.resolve()
    try:
        return COMMANDS[args.command](args)
    except AsvError as e:
        print(f"asv_suite {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
