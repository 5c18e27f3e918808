"""The report (DESIGN section 1, 5, 7): ``python -m xkd.report RUN`` recomputes every applicable
metric from a run folder's checkpoints and explanations, without retraining, and writes
``RUN/metrics/`` (per-sample CSVs, ``aggregates.json``) and ``RUN/report/`` (``report.md``, a
self-contained ``report.html``, ``figures/*.png``). ``build_seed_report`` summarises a multi-seed
run (per-seed tables, mean ± std, paired differences to a baseline student with t-intervals).
"""

from xkd.report.builder import build_report
from xkd.report.seeds import build_seed_report

__all__ = ["build_report", "build_seed_report"]
