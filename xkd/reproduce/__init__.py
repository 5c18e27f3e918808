"""``python -m xkd.reproduce``: the literature's benchmark suites, ready to run.

A suite is a folder of experiment files plus a ``suite.yaml`` naming them and the numbers the
papers report (:mod:`xkd.reproduce.suites`); ``--list`` prints them, ``SUITE --dry-run`` runs every
file end to end on fake data in the real on-disk format (:mod:`xkd.reproduce.fake_data`), and a
real run writes the ``paper | xkd | difference`` table (:mod:`xkd.reproduce.results`) and can be
restarted where it stopped (:mod:`xkd.reproduce.runner`). The CLI is :mod:`xkd.reproduce.cli`.
"""

from xkd.reproduce.suites import Suite, available, list_rows, load_suite

__all__ = ["Suite", "available", "list_rows", "load_suite"]
