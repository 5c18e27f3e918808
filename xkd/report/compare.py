"""``python -m xkd.report.compare RUN [RUN ...] [--baselines reviewkd,e2kd] [--out FILE.md]``:
the paired multi-seed table of explanation-guidance benchmarks (issue 15) from run folders.

For every multi-seed RUN (``seed-K/summary.json``, finished seeds only): the teacher's accuracy and
map quality per seed (pointing game / relevance mass of its Grad-CAM on the masks, from
``metrics/aggregates.json``); per student and test set the mean ± std over seeds and the paired
difference to each baseline with its 95 % t-interval (``xkd.report.stats.paired_difference``,
scipy.stats.t); and the power line: the median over students of the sd of the paired differences
to the first baseline, the seeds that would give a ±0.02 interval, and the smallest difference
the seeds run could detect at 80 % power (``xkd.report.power``). Markdown on stdout (or ``--out``).
A student named ``NAME-GROUP`` is paired with ``BASELINE-GROUP`` (:func:`paired_name`). A student
whose shuffled-map control ran too (``NAME_shuffled``, :func:`control_name`) also gets the paired
difference to it ("Δ vs control"): the part of its effect that comes from where the teacher looks
in each image; ``--controls COLUMN`` prints those as a variants × benchmarks table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from xkd.errors import UserError, run_cli
from xkd.io import write_text
from xkd.report.power import min_detectable, seeds_for_halfwidth
from xkd.report.seeds import collect
from xkd.report.stats import mean_std, paired_difference

MAPS = (("pointing_game", "PG"), ("relevance_mass_accuracy", "RM"))


def paired_name(student: str, baseline: str) -> str:
    """The baseline a student is paired with: students named ``NAME-GROUP`` (e.g. one per
    training fraction, ``att_target-f10``) pair with ``BASELINE-GROUP``."""
    return f"{baseline}-{student.rsplit('-', 1)[1]}" if "-" in student else baseline


def control_name(student: str) -> str:
    """The shuffled-map control of a student: ``NAME_shuffled`` (``NAME_shuffled-GROUP``)."""
    name, sep, group = student.partition("-")
    return f"{name}_shuffled{sep}{group}"


def _f(x: float | None, signed: bool = False) -> str:
    if x is None or x != x:
        return "-"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def _finished(root: Path) -> list[int]:
    seeds = sorted(int(p.name.split("-")[1]) for p in root.glob("seed-*")
                   if (p / "summary.json").is_file())
    if not seeds:
        raise UserError(f"{root}: no finished seed-K/summary.json; run a multi-seed experiment first")
    return seeds


def _collect_all(roots: list[Path]) -> dict[str, Any]:
    """``seeds.collect`` of several run folders of one benchmark (more seeds run later), merged."""
    merged: dict[str, Any] = {}
    for root in roots:
        col = collect(root, _finished(root))
        clash = set(col["per_seed"]) & set(merged.get("per_seed", {}))
        if clash:
            raise UserError(f"{root}: seed(s) {sorted(clash)} also in an earlier run folder of this benchmark")
        if not merged:
            merged = col
        else:
            merged["per_seed"].update(col["per_seed"])
    return merged


def benchmark_table(root: Path | list[Path], baselines: list[str]) -> tuple[str, dict[str, Any]]:
    """Markdown of one benchmark (a run folder, or several holding different seeds) and the
    numbers behind it."""
    roots = [root] if isinstance(root, Path) else list(root)
    col = _collect_all(roots)
    per_seed, sets = col["per_seed"], col["test_sets"]
    seeds = sorted(per_seed)
    models: list[str] = []
    for s in seeds:
        models += [m for m, v in per_seed[s].items() if v.get("role") == "student" and m not in models]
    scores = [f"{ts}_acc" for ts in sets]
    lines = [f"#### {' + '.join(r.name for r in roots)}: {len(seeds)} seeds ({', '.join(map(str, seeds))})", ""]
    lines += ["| seed | teacher " + " | teacher ".join(scores) + " | teacher map PG / RM |",
              "|---" * (len(scores) + 2) + "|"]
    for s in seeds:
        t = per_seed[s].get("teacher", {})
        q = " / ".join(_f(t.get(f"teacher_map_{k}_gradcam")) for k, _ in MAPS)
        lines.append(f"| {s} | " + " | ".join(_f(t.get(c)) for c in scores) + f" | {q} |")
    controlled = any(control_name(m) in models for m in models)
    head = ["variant"]
    for c in scores:
        head += [f"{c} mean ± std"] + [f"{c} Δ vs {b} [95% CI]" for b in baselines]
        head += [f"{c} Δ vs control [95% CI]"] if controlled else []
    lines += ["", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    numbers: dict[str, Any] = {"seeds": seeds, "rows": {}}
    sds: dict[str, list[float]] = {c: [] for c in scores}
    for m in models:
        cells, row = [m], {}
        for c in scores:
            vals = [per_seed[s].get(m, {}).get(c) for s in seeds]
            mu, sd = mean_std(vals)
            have = sum(v is not None for v in vals)
            cells.append(f"{_f(mu)} ± {_f(sd)}" + (f" ({have} seeds)" if have < len(seeds) else ""))
            row[c] = {"mean": mu, "std": sd}
            for b0 in baselines:
                b = paired_name(m, b0)
                if m == b or not any(b in per_seed[s] for s in seeds):
                    cells.append("-")
                    continue
                d = paired_difference(vals, [per_seed[s].get(b, {}).get(c) for s in seeds])
                cells.append(f"{_f(d['mean'], True)} [{_f(d['ci_low'], True)}, {_f(d['ci_high'], True)}]")
                row[c][f"vs_{b0}"] = d
                if b0 == baselines[0] and d["sd"] == d["sd"]:
                    sds[c].append(d["sd"])
            if controlled:
                ctl = control_name(m)
                if ctl not in models:
                    cells.append("-")
                    continue
                d = paired_difference(vals, [per_seed[s].get(ctl, {}).get(c) for s in seeds])
                cells.append(f"{_f(d['mean'], True)} [{_f(d['ci_low'], True)}, {_f(d['ci_high'], True)}]")
                row[c]["vs_control"] = d
        lines.append("| " + " | ".join(cells) + " |")
        numbers["rows"][m] = row
    lines.append("")
    for c in scores:
        if sds[c]:
            sd = statistics.median(sds[c])
            lines.append(f"Power ({c}, vs {baselines[0]}): median sd of paired differences {sd:.3f}; "
                         f"seeds for a ±0.02 95% interval: {seeds_for_halfwidth(sd, 0.02)}; smallest "
                         f"difference {len(seeds)} seeds detect at 80% power: "
                         f"{min_detectable(sd, len(seeds)):.3f}.")
            numbers.setdefault("power", {})[c] = sd
    return "\n".join(lines) + "\n", numbers


def matrix(results: list[tuple[str, dict[str, Any]]], baseline: str, columns: list[str],
           key: str | None = None) -> str:
    """Variants × benchmarks: the paired difference to ``baseline`` [95% CI] on each benchmark's
    first available column of ``columns``, the seeds, and the smallest difference those seeds
    detect at 80 % power (median sd of the paired differences). ``key="vs_control"``: the
    difference of each variant to its own shuffled-map control instead (variants that have one)."""
    key = key or f"vs_{baseline}"
    picked = []
    for name, nums in results:
        col = next((c for c in columns if c in nums.get("power", {})), None)
        if col is not None:
            picked.append((name, nums, col))
    head = ["variant"] + [f"{n} ({c}, {len(x['seeds'])} seeds)" for n, x, c in picked]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    variants: list[str] = []
    for _, nums, _ in picked:
        variants += [v.rsplit("-", 1)[0] if "-" in v else v for v in nums["rows"] if v not in variants]
    variants = list(dict.fromkeys(variants))
    if key == "vs_control":
        variants = [v for v in variants if any(key in nums["rows"][k].get(col, {})
                                               for _, nums, col in picked for k in nums["rows"]
                                               if k == v or k.rsplit("-", 1)[0] == v)]
    for v in variants:
        cells = [v]
        for _, nums, col in picked:
            groups = [k for k in nums["rows"] if k == v or k.rsplit("-", 1)[0] == v]
            parts = []
            for k in groups:
                d = nums["rows"][k].get(col, {}).get(key)
                tag = f"{k.rsplit('-', 1)[1]}: " if "-" in k else ""
                if d is None and key == "vs_control":
                    continue
                if d is None:
                    parts.append(f"{tag}{_f(nums['rows'][k][col]['mean'])} (baseline)")
                else:
                    n = f", n={d['n']}" if d["n"] != len(nums["seeds"]) else ""
                    parts.append(f"{tag}{_f(d['mean'], True)} [{_f(d['ci_low'], True)}, {_f(d['ci_high'], True)}]{n}")
            cells.append("; ".join(parts) or "-")
        lines.append("| " + " | ".join(cells) + " |")
    if key == "vs_control":
        return "\n".join(lines) + "\n"
    cells = ["smallest detectable Δ (80 % power)"]
    for _, nums, col in picked:
        cells.append(_f(min_detectable(nums["power"][col], len(nums["seeds"]))))
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m xkd.report.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="multi-seed run folders; RUN1,RUN2 = one benchmark "
                   "whose seeds were run into two folders")
    p.add_argument("--baselines", default="reviewkd,e2kd", help="students to pair against")
    p.add_argument("--out", help="write the markdown here instead of stdout")
    p.add_argument("--matrix", action="append", help="also a variants x benchmarks table of the paired difference "
                   "to the first baseline on the first of these columns each benchmark has "
                   "(e.g. test_decoy_shuffled_acc,test_acc); repeat for several tables")
    p.add_argument("--controls", action="append", help="also a variants x benchmarks table of each "
                   "variant's paired difference to its own shuffled-map control (NAME_shuffled) on "
                   "the first of these columns each benchmark has; repeatable")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    baselines = args.baselines.split(",")

    def body() -> int:
        results = []
        for r in args.runs:
            roots = [Path(x) for x in r.split(",")]
            results.append((roots[0].name, *benchmark_table(roots, baselines)))
        text = "\n".join(t for _, t, _ in results)
        for cols in reversed(args.controls or []):
            text = matrix([(n, x) for n, _, x in results], baselines[0], cols.split(","),
                          key="vs_control") + "\n" + text
        for cols in reversed(args.matrix or []):
            text = matrix([(n, x) for n, _, x in results], baselines[0], cols.split(",")) + "\n" + text
        if args.out:
            write_text(Path(args.out), text)
        else:
            print(text)
        return 0

    return run_cli(body, interrupted="nothing was written", after_fault="nothing was written")


if __name__ == "__main__":
    sys.exit(main())
