"""``python -m xkd.bench`` on a tiny setting: the table and the JSON have the promised structure
(issue 17). Timings are not asserted (targets are checked by running the bench, never in tests)."""

from __future__ import annotations

import json
import math

from xkd.bench import main

NEW = ("deletion_insertion", "report_forwards", "engine", "startup")
RATIOS = {
    "deletion_insertion": ("ratio_over_bare_64", "ratio_over_bare_256", "ratio_over_bare_floor",
                           "speedup_over_rise_loop",
                           "speedup_over_per_sample_calls", "channels_last_ratio"),
    "report_forwards": ("forwards_ratio", "time_ratio"),
    "engine": ("engine_over_bare_ratio", "engine_over_bare_cpu_ratio", "augmentation_share",
               "per_sample_torchvision_share"),
    "startup": ("help_s", "list_s", "help_peak_rss_mb"),
}


def test_tiny_bench_writes_the_table_and_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["--only", *NEW, "--tiny", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res) == {"machine", *NEW} and "gpu" in res["machine"]
    for name, keys in RATIOS.items():
        for k in keys:
            assert isinstance(res[name][k], float) and math.isfinite(res[name][k]) and res[name][k] > 0, (name, k)
    assert res["deletion_insertion"]["targets"] == {"ratio_over_bare_64": 1.05, "ratio_over_bare_256": 1.05,
                                                    "speedup_over_rise_loop": 2.0}
    assert res["engine"]["targets"] == {"engine_over_bare_ratio": 1.05, "augmentation_share": 0.03}
    assert res["startup"]["targets"] == {"help_s": 1.0}
    # the forward counts are exact, not timings: shared forwards never exceed separate ones
    rf = res["report_forwards"]
    assert 0 < rf["shared_images"] < rf["separate_images"]
    assert rf["forwards_ratio"] == rf["shared_images"] / rf["separate_images"]
    table = capsys.readouterr().out
    for name, keys in RATIOS.items():
        for k in keys:
            if k in res[name].get("targets", {}):
                assert any(line.split()[:2] == [name, k] for line in table.splitlines()), (name, k)
