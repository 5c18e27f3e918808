"""Saliency cache blocks (issue 18): a corrupt block is caught when read and rebuilt, never used;
an interrupted build resumes from its complete blocks; opening reads O(1) bytes of the file."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch

import xkd.explain as E
from xkd.config import ExplainConfig
from xkd.errors import UserError
from xkd.explain import blockfile as B
from xkd.explain.cache_store import bad_path
from xkd.explain.explainers import Explainer
from tests.test_saliency_cache import Images, calls, teacher  # noqa: F401  (fixtures)

CFG = ExplainConfig(method="saliency", target="teacher_top1", max_batch=3)


def _build(root, teacher, **kw):
    return E.SaliencyCache.build_or_load(root, teacher, Images(), CFG, "images:n=10:seed=5", device="cpu",
                                         batch_size=3, progress=False, block=3, **kw)


def _corrupt(path, layout, k):
    raw = bytearray(path.read_bytes())
    raw[layout.offset(k) + layout.block * 4 + 5] ^= 0x20  # one byte of a map of block k
    path.write_bytes(bytes(raw))


def test_corrupt_block_detected_when_read_and_rebuilt(tmp_path, teacher, calls):
    ref = _build(tmp_path, teacher)
    assert ref.layout.n_blocks == 4 and sum(calls) == 10
    good_bytes, good_maps = ref.path.read_bytes(), ref.batch(range(10))
    del ref
    _corrupt(tmp_path / json.loads((tmp_path / "index.json").read_text())["caches"].popitem()[1]["file"],
             B.Layout(10, 16, 16, 3), 2)
    calls.clear()
    c = _build(tmp_path, teacher)
    assert c.status == "loaded" and calls == []  # opening does not read the blocks
    assert torch.equal(c.batch([0, 1, 2]), good_maps[:3]) and calls == []  # blocks 0 and 1 are fine
    got = c.batch([7, 6])  # block 2: caught, recomputed (3 maps), then read
    assert sum(calls) == 3 and torch.equal(got, good_maps[[7, 6]])
    assert c.path.read_bytes() == good_bytes


def test_worker_without_repair_marks_block_and_next_open_rebuilds(tmp_path, teacher, calls):
    c = _build(tmp_path, teacher)
    good = c.path.read_bytes()
    _corrupt(c.path, c.layout, 3)
    worker = pickle.loads(pickle.dumps(c))  # what a DataLoader worker gets: no repair hook
    assert torch.equal(worker[0], c[0])
    with pytest.raises(UserError, match="block 3 corrupt .* marked for rebuilding"):
        worker[9]
    assert bad_path(c.path).read_text().split() == ["3"]
    calls.clear()
    again = _build(tmp_path, teacher)
    assert again.status == "built" and "repairing block(s) [3]" in again.reason and sum(calls) == 1
    assert again.path.read_bytes() == good and not bad_path(again.path).exists()


def test_interrupted_build_resumes_from_complete_blocks(tmp_path, teacher, calls, monkeypatch):
    original = Explainer._run
    n: list[int] = []

    def dies(self, x, *args):  # the injected stop: killed while explaining the third block
        n.append(len(x))
        if len(n) == 3:
            raise KeyboardInterrupt
        return original(self, x, *args)

    monkeypatch.setattr(Explainer, "_run", dies)
    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path / "a", teacher)
    key, entry = next(iter(json.loads((tmp_path / "a" / "index.json").read_text())["caches"].items()))
    path = tmp_path / "a" / entry["file"]
    assert entry["complete"] is False and path.is_file()
    lay = B.Layout(10, 16, 16, 3)
    fd = os.open(path, os.O_RDONLY)
    assert [B.block_ok(fd, lay, k) for k in range(4)] == [True, True, False, False]
    os.close(fd)
    with pytest.raises(UserError, match="incomplete"):  # an incomplete cache is never read
        E.load_existing(tmp_path / "a", key)
    monkeypatch.setattr(Explainer, "_run", original)
    calls.clear()
    resumed = _build(tmp_path / "a", teacher)
    assert resumed.status == "built" and "resuming" in resumed.reason
    assert sum(calls) == 4  # only blocks 2 and 3 (3 + 1 maps) were explained again ...
    fresh = _build(tmp_path / "b", teacher)
    assert resumed.path.read_bytes() == fresh.path.read_bytes()  # ... and the file is the same


def _rchar() -> int:
    for line in open("/proc/self/io"):
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise OSError("no rchar")


def test_opening_a_cache_of_10000_maps_reads_only_the_header(tmp_path):
    lay = B.Layout(10_000, 32, 32, B.default_block(32, 32))
    path = tmp_path / "saliency-0123456789abcdef.xkdsal"
    B.create(path, lay, "k" * 64)
    fd = os.open(path, os.O_RDWR)
    rng = np.random.default_rng(0)
    for k in range(lay.n_blocks):
        B.write(fd, lay, k, rng.random((len(lay.rows(k)), 1, 32, 32), dtype=np.float32))
    os.close(fd)
    entry = {"file": path.name, "format": B.FORMAT, "layout": lay.as_dict(), "complete": True,
             "storage": {"mode": "area", "size": [32, 32]}, "image_shape": [3, 32, 32]}
    from xkd.explain.cache_store import write_index

    write_index(tmp_path, {"k" * 64: entry})
    try:
        before = _rchar()
    except OSError:
        pytest.skip("no /proc/self/io on this system")
    c = E.load_existing(tmp_path, "k" * 64)
    read = _rchar() - before
    size = path.stat().st_size
    assert size > 20_000_000 and read < 16_384, (read, size)  # index.json + the 4 KiB header
    before = _rchar()
    assert c[9_999].shape == (1, 32, 32)  # the first read of a block verifies that block only
    assert _rchar() - before <= lay.stride + 4096
