"""``xkd.report.power`` (seeds needed, minimum detectable effect) and ``python -m xkd.report.compare``."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from xkd import io
from xkd.report.compare import benchmark_table, main
from xkd.report.power import halfwidth, min_detectable, paired_power, seeds_for_halfwidth


def test_seeds_for_halfwidth_is_the_smallest_n_reaching_the_target():
    sd = 0.04
    n = seeds_for_halfwidth(sd, 0.02)
    hw = lambda k: stats.t.ppf(0.975, k - 1) * sd / math.sqrt(k)  # noqa: E731
    assert hw(n) <= 0.02 < hw(n - 1)
    assert n == 18  # t(0.975, 17) * 0.04 / sqrt(18) = 0.0199
    assert math.isclose(halfwidth(sd, n), hw(n))


def test_min_detectable_effect_has_80_percent_power_by_simulation():
    sd, n = 0.05, 5
    delta = min_detectable(sd, n)
    assert math.isclose(paired_power(delta, sd, n), 0.8, abs_tol=1e-6)
    rng = np.random.default_rng(0)
    d = rng.normal(delta, sd, size=(40000, n))
    p = stats.ttest_1samp(d, 0.0, axis=1).pvalue
    assert abs((p < 0.05).mean() - 0.8) < 0.01
    # the textbook approximation (t_{0.975} + t_{0.8}) sd / sqrt(n) is close to the exact value
    approx = (stats.t.ppf(0.975, n - 1) + stats.t.ppf(0.8, n - 1)) * sd / math.sqrt(n)
    assert abs(delta - approx) / approx < 0.1
    for k in (2, 3):  # few seeds (df 1-2): scipy's nct tail is unstable there; simulate instead
        mde = min_detectable(0.03, k)
        p = stats.ttest_1samp(rng.normal(mde, 0.03, size=(40000, k)), 0.0, axis=1).pvalue
        assert abs((p < 0.05).mean() - 0.8) < 0.01
    assert math.isclose(paired_power(0.05, 0.05, 5),
                        stats.nct.sf(stats.t.ppf(0.975, 4), 4, math.sqrt(5))
                        + stats.nct.cdf(-stats.t.ppf(0.975, 4), 4, math.sqrt(5)), rel_tol=1e-6)


def _fake_run(root, accs: dict[str, list[float]], shuffled: dict[str, list[float]]):
    for s in range(len(next(iter(accs.values())))):
        d = root / f"seed-{s}"
        (d / "metrics").mkdir(parents=True)
        rows = [{"model": "teacher", "role": "teacher", "test_acc": 0.9,
                 "test_decoy_shuffled_acc": 0.88}]
        rows += [{"model": m, "role": "student", "test_acc": v[s], "test_decoy_shuffled_acc": shuffled[m][s]}
                 for m, v in accs.items()]
        io.write_json(d / "summary.json",
                      {"task": "classification", "test_sets": ["test", "test_decoy_shuffled"], "rows": rows})
        agg = {"results": [{"model": "teacher", "metric": "pointing_game", "explainer": "gradcam",
                            "mean": 0.8 + 0.01 * s}]}
        io.write_json(d / "metrics" / "aggregates.json", agg)
    (root / "seed-9").mkdir()  # an unfinished seed: no summary.json, left out


def test_compare_table_pairs_every_student_with_each_baseline(tmp_path, capsys):
    accs = {"reviewkd": [0.50, 0.60, 0.55], "e2kd": [0.52, 0.61, 0.60], "mix": [0.56, 0.63, 0.58]}
    shuf = {"reviewkd": [0.1, 0.2, 0.3], "e2kd": [0.1, 0.2, 0.3], "mix": [0.2, 0.2, 0.2]}
    _fake_run(tmp_path / "bench", accs, shuf)
    text, nums = benchmark_table(tmp_path / "bench", ["reviewkd", "e2kd"])
    assert nums["seeds"] == [0, 1, 2]
    d = np.array(accs["mix"]) - np.array(accs["reviewkd"])
    res = stats.ttest_1samp(d, 0.0).confidence_interval(0.95)
    got = nums["rows"]["mix"]["test_acc"]["vs_reviewkd"]
    assert math.isclose(got["ci_low"], res.low) and math.isclose(got["ci_high"], res.high)
    assert f"{d.mean():+.3f} [{res.low:+.3f}, {res.high:+.3f}]" in text
    assert math.isclose(nums["rows"]["mix"]["test_acc"]["std"], np.std(accs["mix"], ddof=1))
    assert "| 2 | 0.900 | 0.880 | 0.820 / - |" in text  # teacher per seed with its map quality
    sds = sorted([np.std(np.array(accs[m]) - accs["reviewkd"], ddof=1) for m in ("e2kd", "mix")])
    assert math.isclose(nums["power"]["test_acc"], float(np.median(sds)))
    assert main([str(tmp_path / "bench")]) == 0
    assert "test_decoy_shuffled_acc Δ vs e2kd" in capsys.readouterr().out


def test_compare_without_finished_seeds_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "empty" / "seed-0").mkdir(parents=True)
    assert main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_grouped_students_pair_with_the_baseline_of_their_group(tmp_path):
    accs = {"reviewkd-f10": [0.40, 0.50, 0.45], "att-f10": [0.45, 0.52, 0.50],
            "reviewkd": [0.70, 0.72, 0.71], "att": [0.70, 0.70, 0.70]}
    _fake_run(tmp_path / "b", accs, {m: [0.0, 0.0, 0.0] for m in accs})
    _, nums = benchmark_table(tmp_path / "b", ["reviewkd"])
    got = nums["rows"]["att-f10"]["test_acc"]["vs_reviewkd"]["mean"]
    assert math.isclose(got, np.mean(np.array(accs["att-f10"]) - accs["reviewkd-f10"]))
    assert math.isclose(nums["rows"]["att"]["test_acc"]["vs_reviewkd"]["mean"], -0.01)


def test_seeds_run_into_two_folders_form_one_benchmark(tmp_path):
    a = {"reviewkd": [0.5, 0.6, 0.55], "mix": [0.52, 0.61, 0.60]}
    _fake_run(tmp_path / "first", a, {m: [0.0] * 3 for m in a})
    more = tmp_path / "more"
    _fake_run(more, {"reviewkd": [0.7, 0.65], "mix": [0.71, 0.69], "extra": [0.9, 0.9]},
              {m: [0.0, 0.0] for m in ("reviewkd", "mix", "extra")})
    for s in (1, 0):  # renumber the later run's seeds 0, 1 -> 3, 4
        (more / f"seed-{s}").rename(more / f"seed-{s + 3}")
    text, nums = benchmark_table([tmp_path / "first", more], ["reviewkd"])
    assert nums["seeds"] == [0, 1, 2, 3, 4]
    d = np.array([0.52, 0.61, 0.60, 0.71, 0.69]) - [0.5, 0.6, 0.55, 0.7, 0.65]
    assert math.isclose(nums["rows"]["mix"]["test_acc"]["vs_reviewkd"]["mean"], d.mean())
    assert nums["rows"]["extra"]["test_acc"]["vs_reviewkd"]["n"] == 2
    assert "0.900 ± 0.000 (2 seeds)" in text
    assert main([f"{tmp_path / 'first'},{tmp_path / 'first'}"]) == 2  # the same seeds twice


def test_matrix_lists_variants_by_benchmark_with_the_detectable_effect(tmp_path, capsys):
    a = {"reviewkd": [0.5, 0.6, 0.55], "mix": [0.52, 0.61, 0.60]}
    _fake_run(tmp_path / "one", a, {m: [0.1, 0.2, 0.3] for m in a})
    g = {"reviewkd-f10": [0.4, 0.5, 0.45], "mix-f10": [0.41, 0.52, 0.45]}
    _fake_run(tmp_path / "two", g, {m: [0.0] * 3 for m in g})
    assert main([str(tmp_path / "one"), str(tmp_path / "two"), "--baselines", "reviewkd",
                 "--matrix", "test_acc"]) == 0
    out = capsys.readouterr().out
    d = np.array(a["mix"]) - a["reviewkd"]
    ci = stats.ttest_1samp(d, 0.0).confidence_interval(0.95)
    assert f"| mix | {d.mean():+.3f} [{ci.low:+.3f}, {ci.high:+.3f}] | f10: +0.010 [" in out
    sd = max(np.std(d, ddof=1), 1e-12)
    assert f"| smallest detectable Δ (80 % power) | {min_detectable(sd, 3):.3f} |" in out


def test_out_file_that_cannot_be_written_is_one_line_exit_2(tmp_path, capsys):
    accs = {"reviewkd": [0.50, 0.60], "mix": [0.56, 0.63]}
    _fake_run(tmp_path / "bench", accs, accs)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main([str(tmp_path / "bench"), "--out", str(blocker / "table.md")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "table.md" in err[0]
    assert main([str(tmp_path / "bench"), "--out", str(tmp_path / "table.md")]) == 0
    assert "| mix |" in (tmp_path / "table.md").read_text()


def test_a_variant_is_paired_with_its_own_shuffled_control(tmp_path, capsys):
    accs = {"reviewkd": [0.5, 0.6, 0.55, 0.52], "e2kd": [0.70, 0.75, 0.72, 0.69],
            "e2kd_shuffled": [0.50, 0.58, 0.57, 0.50], "mix": [0.5, 0.6, 0.6, 0.5],
            "e2kd-f10": [0.3, 0.3, 0.4, 0.3], "e2kd_shuffled-f10": [0.2, 0.3, 0.3, 0.3],
            "reviewkd-f10": [0.3] * 4}
    _fake_run(tmp_path / "b", accs, {m: [0.0] * 4 for m in accs})
    text, nums = benchmark_table(tmp_path / "b", ["reviewkd"])
    d = np.array(accs["e2kd"]) - accs["e2kd_shuffled"]
    ci = stats.ttest_1samp(d, 0.0).confidence_interval(0.95)
    got = nums["rows"]["e2kd"]["test_acc"]["vs_control"]
    assert math.isclose(got["mean"], d.mean()) and math.isclose(got["ci_low"], ci.low)
    assert "vs_control" not in nums["rows"]["mix"]["test_acc"]  # no mix_shuffled ran
    g = np.array(accs["e2kd-f10"]) - accs["e2kd_shuffled-f10"]
    assert math.isclose(nums["rows"]["e2kd-f10"]["test_acc"]["vs_control"]["mean"], g.mean())
    assert "test_acc Δ vs control [95% CI]" in text
    assert main([str(tmp_path / "b"), "--baselines", "reviewkd", "--controls", "test_acc"]) == 0
    out = capsys.readouterr().out
    table = out.split("\n\n")[0]
    assert f"| e2kd | {d.mean():+.3f} [{ci.low:+.3f}, {ci.high:+.3f}]; f10: {g.mean():+.3f} [" in table
    assert "| mix |" not in table and "| reviewkd |" not in table
