"""Run cluster's, Ray's and Dask's halves of the microbenchmarks side by side.

    python bench/run.py [--frameworks cluster,ray,dask] [--repeat N] [--quick]
                        [--only NAME,...] [--write-results bench/RESULTS.md]

Each half runs in its own subprocess (one at a time: the machine has 2 cores), the halves are
interleaved ``--repeat`` times in a rotating order, and the table shows the median per metric.
Ratios are oriented so that >1 means cluster is better. A half that fails shows "n/a" and its
error, and the others still run. Raw JSON and each half's stderr go to bench/out/.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _engine import (
    DEFAULT_METRICS,
    METRIC_BY_NAME,
    REPO,
    format_value,
    parse_only,
    stop_process_group,
)

BENCH = Path(__file__).resolve().parent
OUT = BENCH / "out"

FRAMEWORKS = ("cluster", "ray", "dask")
TITLES = {"cluster": "cluster", "ray": "Ray", "dask": "Dask"}


def half_command(framework: str) -> list[str]:
    return [sys.executable, str(BENCH / f"peer_{framework}.py"), "--json"]


# --------------------------------------------------------------------------------------------
# Running one half
# --------------------------------------------------------------------------------------------


def parse_payload(stdout: str) -> dict | None:
    """The half prints one JSON line; anything a worker printed to stdout is skipped."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            payload = json.loads(line)
        except ValueError:
            continue
        if isinstance(payload, dict) and isinstance(payload.get("results"), list):
            return payload
    return None


def run_half(
    framework: str, flags: list[str], timeout: float, log_path: Path, verbose: bool
) -> dict:
    """Run one half; return its payload, or a payload whose "error" says why there is none."""
    cmd = half_command(framework) + flags
    tag = f"[{framework}]"
    print(f"{tag} $ {shlex.join(cmd)}", file=sys.stderr, flush=True)
    tail: collections.deque[str] = collections.deque(maxlen=30)
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out, open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

        def pump() -> None:
            assert proc.stderr is not None
            for raw in proc.stderr:
                line = raw.decode(errors="replace").rstrip("\n")
                log.write(line + "\n")
                tail.append(line)
                if verbose or line.startswith("[bench]"):
                    print(f"{tag} {line}", file=sys.stderr, flush=True)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            # SIGINT first, so that the half's finally blocks (ray.shutdown(), ...) run.
            if stop_process_group(proc, first_signal=signal.SIGINT, grace_s=30.0):
                print(f"{tag} stopped processes that outlived the half", file=sys.stderr)
            reader.join(timeout=10)
            if proc.stderr is not None:
                proc.stderr.close()
        out.seek(0)
        stdout = out.read().decode(errors="replace")
    elapsed = time.perf_counter() - start
    payload = parse_payload(stdout)
    if payload is None:
        why = f"timed out after {timeout:.0f} s" if timed_out else f"exited {proc.returncode}"
        payload = {
            "framework": framework,
            "results": [],
            "error": f"{why} without results; stderr tail:\n" + "\n".join(list(tail)[-12:]),
        }
    elif timed_out:
        payload["error"] = f"timed out after {timeout:.0f} s"
    payload["elapsed_s"] = elapsed
    payload["returncode"] = proc.returncode
    print(f"{tag} done in {elapsed:.0f} s (exit {proc.returncode})", file=sys.stderr, flush=True)
    return payload


# --------------------------------------------------------------------------------------------
# Aggregation and tables
# --------------------------------------------------------------------------------------------


class Summary:
    """Medians per (framework, metric) over the repeats, plus notes and errors."""

    def __init__(self, runs: dict[str, list[dict]], metric_names: list[str]):
        self.runs = runs
        self.names = metric_names
        self.median: dict[tuple[str, str], float] = {}
        self.samples: dict[tuple[str, str], list[float]] = {}
        self.note: dict[tuple[str, str], str] = {}
        self.errors: list[str] = []
        for fw, payloads in runs.items():
            for i, payload in enumerate(payloads, 1):
                if payload.get("error"):
                    self.errors.append(f"{fw} (run {i}): {payload['error']}")
                for r in payload.get("results", []):
                    key = (fw, r["name"])
                    if r.get("error"):
                        self.errors.append(f"{fw} {r['name']} (run {i}): {r['error']}")
                        continue
                    if r.get("value") is None:  # not applicable to this framework
                        self.note[key] = r.get("note", "")
                        continue
                    self.samples.setdefault(key, []).append(float(r["value"]))
                    self.note[key] = r.get("note", "")
        for key, values in self.samples.items():
            self.median[key] = statistics.median(values)

    def version(self, fw: str) -> str:
        for payload in self.runs.get(fw, []):
            if payload.get("version"):
                return str(payload["version"])
        return "n/a"

    def python(self, fw: str) -> str:
        for payload in self.runs.get(fw, []):
            if payload.get("python"):
                return str(payload["python"])
        return "n/a"

    def cell(self, fw: str, name: str) -> str:
        key = (fw, name)
        if key not in self.median:
            return "n/a"
        text = format_value(self.median[key])
        if self.note.get(key, "").startswith("zero-copy"):
            return f"zero-copy ({text})"
        return text

    def ratio(self, fw: str, name: str) -> str:
        ours, theirs = self.median.get(("cluster", name)), self.median.get((fw, name))
        if ours is None or theirs is None or ours <= 0 or theirs <= 0:
            return "n/a"
        better_high = METRIC_BY_NAME[name].higher_is_better
        value = ours / theirs if better_high else theirs / ours
        if value >= 100:
            return f"{value:,.0f}x"
        return f"{value:.1f}x" if value >= 10 else f"{value:.2f}x"


def build_rows(summary: Summary, frameworks: list[str]) -> list[list[str]]:
    peers = [fw for fw in frameworks if fw != "cluster"] if "cluster" in frameworks else []
    header = ["metric", *(TITLES[fw] for fw in frameworks)]
    header += [f"cluster/{TITLES[fw]}" for fw in peers]
    rows = [header]
    for name in summary.names:
        metric = METRIC_BY_NAME[name]
        row = [f"{name} ({metric.unit}, {'higher' if metric.higher_is_better else 'lower'} better)"]
        row += [summary.cell(fw, name) for fw in frameworks]
        row += [summary.ratio(fw, name) for fw in peers]
        rows.append(row)
    return rows


def render_table(rows: list[list[str]]) -> str:
    """A markdown table, padded so it also reads well in a terminal."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def line(row: list[str]) -> str:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        return "| " + " | ".join(cells) + " |"

    sep = "|" + "|".join(["-" * (widths[0] + 2)] + ["-" * (w + 1) + ":" for w in widths[1:]])
    return "\n".join([line(rows[0]), sep + "|", *(line(r) for r in rows[1:])])


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return "unknown"


def _uname() -> str:
    try:
        return subprocess.run(
            ["uname", "-a"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return " ".join(platform.uname())


def machine_facts() -> dict[str, str]:
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return {
        "uname -a": _uname(),
        "CPU": _cpu_model(),
        "cores": f"{os.cpu_count()} ({usable} usable by this process)",
        "memory": _mem_total(),
        "Python": f"{platform.python_version()} ({sys.executable})",
    }


def render_markdown(
    summary: Summary, frameworks: list[str], args: argparse.Namespace, argv: list[str]
) -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    facts = machine_facts()
    mode = "quick (--quick: task counts / 10, smaller big objects)" if args.quick else "full"
    lines = [
        "# Benchmark results",
        "",
        f"- Date: {now}",
        f"- Command: `python bench/run.py {shlex.join(argv)}`",
        f"- Mode: {mode}; medians of {args.repeat} interleaved run(s) per framework",
    ]
    lines += [f"- {k}: `{v}`" if k == "uname -a" else f"- {k}: {v}" for k, v in facts.items()]
    versions = ", ".join(f"{TITLES[fw]} {summary.version(fw)}" for fw in frameworks)
    lines.append(f"- Versions: {versions}")
    numpy_versions = {p.get("numpy") for ps in summary.runs.values() for p in ps if p.get("numpy")}
    if numpy_versions:
        lines.append(f"- numpy: {', '.join(sorted(numpy_versions))}")
    lines += [
        "",
        "Everything on 127.0.0.1. One single-node cluster with 2 worker CPUs, except",
        "transfer_1gb_gbps (its own two nodes on this machine, 1 CPU and one object store",
        "each), spill_peak_mem_gb (its own node with a 200 MB object store),",
        "job_submit_to_succeeded_s (its own 2-CPU head serving the job API),",
        "pg_100_bundles_ready_s (its own four nodes of 1 CPU) and policy_decisions_per_s",
        "(no cluster: cluster's scheduling policy over 1,000 simulated nodes); the fault",
        "metrics, when run, start clusters of their own and kill parts of them (see",
        "bench/README.md). Ratios: >1",
        "means cluster is better. GB and GB/s are decimal (10^9 bytes); the array of the",
        '100 MiB metrics is 0.105 GB. "zero-copy": the array that get returns is a read-only',
        "view that does not own its memory. n/a: not measured (see the notes) or failed.",
        "",
        render_table(build_rows(summary, frameworks)),
        "",
        "## Notes from the last run of each half",
        "",
    ]
    for fw in frameworks:
        details = next(
            (p.get("details") for p in reversed(summary.runs[fw]) if p.get("details")), ""
        )
        lines.append(f"- **{TITLES[fw]}** ({details})" if details else f"- **{TITLES[fw]}**")
        for name in summary.names:
            note = summary.note.get((fw, name))
            samples = summary.samples.get((fw, name), [])
            if note is None:
                continue
            spread = ""
            if len(samples) > 1:
                spread = " — runs: " + ", ".join(format_value(s) for s in samples)
            lines.append(f"  - {name}: {note}{spread}")
    if summary.errors:
        lines += ["", "## Errors", ""]
        lines += [f"- {e.splitlines()[0]}" for e in summary.errors]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--frameworks",
        default=",".join(FRAMEWORKS),
        help="comma-separated subset of cluster,ray,dask (default: all three)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="interleaved runs; medians taken")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="task counts / 10, 200 MB transfer, 400 MB through the spill store (smoke test)",
    )
    parser.add_argument(
        "--only",
        metavar="NAME,...",
        help="metric names to run, or groups: faults (the opt-in fault metrics), default "
        "(default: every metric but the opt-in ones)",
    )
    parser.add_argument("--write-results", metavar="PATH", help="also write a markdown report")
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds before one half is stopped (default: 1800, or 600 with --quick)",
    )
    parser.add_argument("--verbose", action="store_true", help="stream each half's stderr")
    args = parser.parse_args(argv)
    args.frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    unknown = [f for f in args.frameworks if f not in FRAMEWORKS]
    if unknown or not args.frameworks:
        parser.error(f"--frameworks takes a subset of {','.join(FRAMEWORKS)}")
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    try:
        args.only_names = parse_only(args.only)
    except ValueError as exc:
        parser.error(str(exc))
    if args.timeout is None:
        args.timeout = 600.0 if args.quick else 1800.0
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    frameworks: list[str] = args.frameworks
    flags = (["--quick"] if args.quick else []) + (["--only", args.only] if args.only else [])
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = OUT / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {fw: [] for fw in frameworks}
    for rep in range(args.repeat):
        order = frameworks[rep % len(frameworks) :] + frameworks[: rep % len(frameworks)]
        for fw in order:
            print(f"=== run {rep + 1}/{args.repeat}: {fw} ===", file=sys.stderr, flush=True)
            payload = run_half(
                fw, flags, args.timeout, out_dir / f"{fw}-{rep + 1}.log", args.verbose
            )
            (out_dir / f"{fw}-{rep + 1}.json").write_text(json.dumps(payload, indent=2) + "\n")
            runs[fw].append(payload)
    names = args.only_names or list(DEFAULT_METRICS)
    summary = Summary(runs, names)
    print()
    print(render_table(build_rows(summary, frameworks)))
    print()
    print("versions: " + ", ".join(f"{TITLES[fw]} {summary.version(fw)}" for fw in frameworks))
    if summary.errors:
        print("\nerrors:")
        for error in summary.errors:
            print("  " + error.replace("\n", "\n    "))
    print(f"\nraw results and logs: {out_dir.relative_to(REPO)}")
    if args.write_results:
        path = Path(args.write_results)
        path.write_text(render_markdown(summary, frameworks, args, argv))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
