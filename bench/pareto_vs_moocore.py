#!/usr/bin/env python3
"""Side-by-side benchmark of the `pareto` CLI against moocore (and pymoo where it finishes).

Same points, same machine, same run; compute time only for every tool: our CLI reports the median
of --repeat runs without parsing (`compute_seconds=`), moocore and pymoo are timed around the
call on an array already in memory. Every result is also checked: ranks exactly (ours - 1 ==
moocore's 0-based ranks), HV and HVC to 1e-12 relative.

Usage (from the repository root, after `./dev bench-setup`):
    .venv/bin/python bench/pareto_vs_moocore.py [--quick] [--out bench/results.json]
Writes JSON results and prints a Markdown table (ours/moocore ratios) for BENCHMARKS.md.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import moocore

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = os.environ.get("PARETO_CLI", os.path.join(ROOT, "target", "release", "pareto"))
TIMEOUT = 120.0  # seconds for one tool on one case; slower cases are reported as "timeout"


def point_set(kind, n, m, rng):
    """Minimisation point sets in [0, 1]^m."""
    if kind == "uniform":
        return rng.random((n, m))
    # Fronts: directions in the positive orthant, scaled onto a surface.
    d = np.abs(rng.standard_normal((n, m))) + 1e-12
    if kind == "linear":  # sum x = 1: a linear front
        return d / d.sum(axis=1, keepdims=True)
    if kind == "concave":  # ||x||_2 = 1: concave for minimisation
        return d / np.linalg.norm(d, axis=1, keepdims=True)
    raise ValueError(kind)


def median_time(fn, repeat, budget):
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
        if sum(times) > budget:
            break
    return float(np.median(times)), result


def ours(command, path, repeat, ref=None, extra=()):
    args = [CLI, command, "--repeat", str(repeat), *extra]
    if ref is not None:
        args += ["--ref", ",".join(repr(float(r)) for r in ref)]
    args.append(path)
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT * repeat, check=True)
    except subprocess.TimeoutExpired:
        return None, None
    seconds = None
    for line in out.stderr.splitlines():
        if line.startswith("compute_seconds="):
            seconds = float(line.split("=", 1)[1])
    if repeat == 1:  # the CLI reports timing only for repeat > 1
        raise SystemExit("use repeat >= 2")
    return seconds, out.stdout.split()


def rel_close(a, b, tol=1e-12):
    return abs(a - b) <= tol * max(abs(a), abs(b), 1e-300)


def run_case(kind, n, m, rng, repeat, do_hvc, pymoo_ok):
    x = point_set(kind, n, m, rng)
    ref = np.full(m, 1.1)
    row = {"kind": kind, "n": n, "m": m}
    with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
        np.savetxt(f, x, delimiter=",", fmt="%.17g")
        path = f.name
    try:
        # Ranks.
        t_ours, out = ours("rank", path, repeat)
        t_moo, ranks = median_time(lambda: moocore.pareto_rank(x), repeat, TIMEOUT)
        row["rank"] = {"ours": t_ours, "moocore": t_moo}
        if out is not None:
            row["rank"]["equal"] = bool(np.array_equal(np.array(out, dtype=np.int64) - 1, ranks))
        if pymoo_ok.get(("rank", m), True):
            from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting
            t_py, _ = median_time(lambda: NonDominatedSorting().do(x, return_rank=True), 1, TIMEOUT)
            row["rank"]["pymoo"] = t_py
            if t_py > 20:
                pymoo_ok[("rank", m)] = False
        # Hypervolume.
        t_ours, out = ours("hv", path, repeat, ref)
        t_moo, hv = median_time(lambda: moocore.hypervolume(x, ref=ref), repeat, TIMEOUT)
        row["hv"] = {"ours": t_ours, "moocore": t_moo, "value": hv}
        if out is not None:
            row["hv"]["equal"] = rel_close(float(out[0]), hv)
        if pymoo_ok.get(("hv", m), True):
            from pymoo.indicators.hv import HV
            t_py, _ = median_time(lambda: HV(ref_point=ref)(x), 1, TIMEOUT)
            row["hv"]["pymoo"] = t_py
            if t_py > 20:
                pymoo_ok[("hv", m)] = False
        # Exclusive contributions where moocore finishes in about a minute. moocore's default
        # ignores dominated points (`ignore_dominated=True`), which our --ignore-dominated
        # matches; on fronts (all points nondominated) both definitions agree. moocore's naive
        # path (M >= 4) returns 0 for contributions below sqrt(DBL_EPSILON): accept those.
        if do_hvc:
            t_ours, out = ours("hvc", path, 2, ref, ["--ignore-dominated"])
            t_moo, hvc = median_time(lambda: moocore.hv_contributions(x, ref=ref), 2, TIMEOUT)
            row["hvc"] = {"ours": t_ours, "moocore": t_moo}
            if out is not None:
                got = np.array(out, dtype=float)
                row["hvc"]["equal"] = bool(all(
                    rel_close(a, b) or abs(a - b) <= 1e-12 * hv or (b == 0 and a < 1.5e-8)
                    for a, b in zip(got, hvc)))
    finally:
        os.unlink(path)
    return row


def crowding_check(rng, trials=60):
    """`pareto crowding` against pymoo's calc_crowding_distance, front by front (fronts of at
    most two points are all inf by our definition). Returns the number of sets that differ."""
    from pymoo.operators.survival.rank_and_crowding.metrics import calc_crowding_distance
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting
    differ = 0
    for trial in range(trials):
        m = 2 + trial % 4
        x = rng.random((40, m)) if trial % 2 else rng.integers(0, 4, (40, m)).astype(float)
        with tempfile.NamedTemporaryFile("w", suffix=".csv", delete=False) as f:
            np.savetxt(f, x, delimiter=",", fmt="%.17g")
            path = f.name
        try:
            out = subprocess.run([CLI, "crowding", path], capture_output=True, text=True, check=True)
        finally:
            os.unlink(path)
        ours = np.array(out.stdout.split(), dtype=float)
        want = np.zeros(len(x))
        for front in NonDominatedSorting().do(x):
            want[front] = calc_crowding_distance(x[front]) if len(front) > 2 else np.inf
        same = np.isinf(ours) == np.isinf(want)
        finite = ~np.isinf(want)
        if not (same.all() and np.allclose(ours[finite], want[finite], rtol=1e-12, atol=1e-12)):
            differ += 1
    return differ


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N = 10^3, 10^4 only")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results-pareto.json"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--crowding-only", action="store_true",
                        help="only compare `pareto crowding` with pymoo on 60 random sets")
    args = parser.parse_args()
    if not os.path.exists(CLI):
        raise SystemExit(f"{CLI} missing: cargo build --release -p pareto")
    rng = np.random.default_rng(args.seed)
    if args.crowding_only:
        differ = crowding_check(rng)
        print(f"crowding: {differ} of 60 sets differ from pymoo")
        return
    rows, pymoo_ok = [], {}
    sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    for m in (2, 3, 4, 5):
        for n in sizes + ([1_000_000] if m == 2 and not args.quick else []):
            for kind in ("uniform", "concave", "linear"):
                repeat = 5 if n <= 10_000 else (2 if m >= 4 and kind != "uniform" else 3)
                do_hvc = m <= 3 or n <= 2_000
                row = run_case(kind, n, m, rng, repeat, do_hvc, pymoo_ok)
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    with open(args.out, "w") as f:
        json.dump({"moocore": moocore.__version__, "rows": rows}, f, indent=1)
    print(table(rows))


def fmt_ratio(entry):
    if entry.get("ours") is None:
        return "timeout"
    if entry.get("moocore") in (None, 0):
        return "-"
    mark = "" if entry.get("equal", True) else " (DIFFERS)"
    return f"{entry['ours'] / entry['moocore']:.2f}{mark}"


def table(rows):
    lines = ["| M | N | set | rank ours/moocore | HV ours/moocore | HVC ours/moocore | rank s (ours / moocore / pymoo) | HV s (ours / moocore / pymoo) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        def secs(e):
            parts = [e.get("ours"), e.get("moocore"), e.get("pymoo")]
            return " / ".join("-" if p is None else f"{p:.2e}" for p in parts)
        hvc = fmt_ratio(r["hvc"]) if "hvc" in r else "-"
        lines.append(f"| {r['m']} | {r['n']:,} | {r['kind']} | {fmt_ratio(r['rank'])} | {fmt_ratio(r['hv'])} | {hvc} | {secs(r['rank'])} | {secs(r['hv'])} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
