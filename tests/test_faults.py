"""Faults and hostile input (issue 14; issue 13 items 9-10), driven through ``python -m xkd.run``.

Every case ends in exit 2 and one ``error:`` line naming what is wrong (path, field, cause), runs
nothing the user did not mean, leaves no half-written file behind, and where a run was under way
``--resume`` continues it once the cause is gone. Faults of the disk are injected by making
:func:`xkd.io._write_file` raise the ``OSError`` a full, read-only or forbidden folder raises.
"""

from __future__ import annotations

import contextlib
import errno
import io as pyio
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml

from tests.conftest import tiny_experiment
from xkd import io as xio
from xkd.errors import UserError
from xkd.run import main

ROOT = Path(__file__).resolve().parents[1]


def small(**over) -> dict:
    """Teacher + one ``ce`` student, no report: a whole run in a few seconds."""
    exp = tiny_experiment(students=[{"name": "ce", "method": "ce", "model": {"name": "resnet8"}}])
    exp["report"] = {"enabled": False}
    exp.update(over)
    return exp


def cli(args: list[str], capsys) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def one_line(err: str) -> str:
    """The single ``error:`` line (warnings of libraries aside, nothing else on stderr)."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1, err
    assert "Traceback" not in err, err
    return errors[0]


def tmp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def inject(monkeypatch, code: int, when: Callable[[str, Path], bool]) -> None:
    """Make the io layer raise ``OSError(code)`` when writing a file ``when(name, folder)`` picks."""
    real = xio._write_file

    def fake(tmp: Path, data: bytes) -> None:
        final = tmp.name[1:].rsplit(".", 2)[0]  # ".NAME.RANDOM.tmp" -> NAME
        if when(final, tmp.parent):
            raise OSError(code, os.strerror(code))
        real(tmp, data)

    monkeypatch.setattr(xio, "_write_file", fake)


def nth(name: str, k: int, under: str = "") -> Callable[[str, Path], bool]:
    """Pick the k-th write (1-based) of file ``name`` in a folder whose path contains ``under``."""
    seen = {"n": 0}

    def when(final: str, folder: Path) -> bool:
        if final == name and under in str(folder):
            seen["n"] += 1
            return seen["n"] >= k
        return False

    return when


@pytest.fixture(scope="module")
def done_run(tmp_path_factory) -> dict:
    """A complete two-epoch run made with a relative ``--out`` from another folder, umask 022."""
    base = tmp_path_factory.mktemp("faults_done")
    exp = base / "exp.yaml"
    exp.write_text(yaml.safe_dump(small(train={"epochs": 2, "batch_size": 16})))
    cwd, mask = os.getcwd(), os.umask(0o022)
    buf = pyio.StringIO()
    try:
        os.chdir(base)
        with contextlib.redirect_stdout(buf):
            assert main([str(exp), "--out", "rel/run"]) == 0
    finally:
        os.chdir(cwd)
        os.umask(mask)
    return {"exp": exp, "run": base / "rel" / "run", "stdout": buf.getvalue()}


def copy_run(done: dict, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(done["run"], dst)
    return dst


# ----------------------------------------------------------------------------- factories

USER = '''
from pathlib import Path
from os import system as os_alias
from subprocess import run as launch
from torch import nn


def tiny(num_classes=10, width=4, marker=None):
    if marker:
        Path(marker).write_text("called")
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(width, width, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
'''


@pytest.fixture
def user_mod(tmp_path, monkeypatch) -> str:
    name = "xkd_fault_user_models"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)
    yield name
    sys.modules.pop(name, None)


@pytest.mark.parametrize("mode", ["--check", "run"])
@pytest.mark.parametrize("spec,params,match", [
    ("os:system", {"command": "touch {marker}"}, r"teacher\.model\.factory: 'os' is a standard-library"),
    ("builtins:eval", {"source": "open({marker!r}, 'w')"}, r"teacher\.model\.factory: 'builtins' is a standard-library"),
    ("subprocess:run", {"args": ["touch", "{marker}"]}, r"teacher\.model\.factory: 'subprocess' is a standard-library"),
    ("{mod}:os_alias", {"command": "touch {marker}"}, r"teacher\.model\.factory: .*os_alias.* builtin_function_or_method, not a callable"),
    ("{mod}:launch", {"args": ["touch", "{marker}"]}, r"teacher\.model\.factory: .*launch.* standard-library module 'subprocess'"),
    ("{mod}:tiny", {"marker": "{marker}", "depth": 3}, r"teacher\.model\.params: cannot call .*depth"),
])
def test_factory_refusals_run_nothing(user_mod, tmp_path, capsys, mode, spec, params, match):
    marker = tmp_path / "MARKER"
    fill = lambda v: v.format(marker=str(marker)) if isinstance(v, str) else v  # noqa: E731
    params = {k: ([fill(x) for x in v] if isinstance(v, list) else fill(v)) for k, v in params.items()}
    exp = small()
    exp["teacher"]["model"] = {"factory": spec.format(mod=user_mod), "params": params}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    out = tmp_path / "run"
    args = [tmp_path / "exp.yaml"] + (["--check"] if mode == "--check" else ["--out", out])
    rc, _, err = cli(args, capsys)
    import re

    assert rc == 2 and re.search(match, one_line(err)), err
    assert not marker.exists()  # the side effect did not happen
    assert not out.exists()  # refused before a run folder


def test_legitimate_user_factory_still_works(user_mod, tmp_path, capsys):
    import xkd.models as M
    from xkd.config import ModelConfig

    marker = tmp_path / "MARKER"
    exp = small()
    exp["teacher"]["model"] = {"factory": f"{user_mod}:tiny", "params": {"marker": str(marker)}}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    rc, out, err = cli([tmp_path / "exp.yaml", "--check"], capsys)
    assert rc == 0 and out.strip().endswith(": ok"), err
    assert marker.read_text() == "called"  # the user asked for this one
    m = M.build(ModelConfig(factory=f"{user_mod}:tiny", params={"width": 6}), num_classes=5)
    assert m(torch.zeros(2, 3, 16, 16)).shape == (2, 5)


# ----------------------------------------------------------------------------- disk faults


def test_disk_full_is_one_line_and_resumes_with_a_torn_history(tmp_path, capsys, monkeypatch):
    """ENOSPC at the student's epoch-2 ``last.pt``: exit 2 naming the file and the cause; what was
    complete stays loadable; a torn last history line (a write cut short) is dropped on resume."""
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(small(train={"epochs": 2, "batch_size": 16})))
    run = tmp_path / "run"
    inject(monkeypatch, errno.ENOSPC, nth("last.pt", 2, under="students"))
    rc, _, err = cli([tmp_path / "exp.yaml", "--out", run], capsys)
    line = one_line(err)
    assert rc == 2 and str(run.resolve() / "students" / "ce" / "last.pt") in line, line
    assert "No space left on device" in line and "--resume" in line
    assert tmp_files(run) == []
    assert torch.load(run / "teacher" / "last.pt", weights_only=True)["complete"]
    assert torch.load(run / "students" / "ce" / "last.pt", weights_only=True)["epoch"] == 1
    assert json.loads((run / "status.json").read_text())["state"] == "failed"
    hist = run / "students" / "ce" / "history.jsonl"
    with open(hist, "a") as f:
        f.write('{"format_version": 1, "epoch": 3, "st')  # a kill in the middle of an append
    monkeypatch.undo()
    rc, out, err = cli([tmp_path / "exp.yaml", "--resume", "--out", run], capsys)
    assert rc == 0, err
    assert "torn" in out + err
    rows = [json.loads(ln) for ln in hist.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert json.loads((run / "status.json").read_text())["state"] == "complete"
    assert (run / "summary.json").is_file() and tmp_files(run) == []


@pytest.mark.parametrize("code,cause", [(errno.EROFS, "Read-only file system"),
                                        (errno.EACCES, "Permission denied")])
def test_read_only_or_forbidden_folder_is_one_line(tmp_path, capsys, monkeypatch, code, cause):
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(small()))
    run = tmp_path / "run"
    inject(monkeypatch, code, lambda name, folder: True)  # every write fails, status.json too
    rc, _, err = cli([tmp_path / "exp.yaml", "--out", run], capsys)
    line = one_line(err)
    assert rc == 2 and cause in line and str(run.resolve()) in line, line
    assert tmp_files(run) == []


def test_torn_jsonl_rows(tmp_path):
    p = tmp_path / "h.jsonl"
    xio.append_jsonl(p, {"epoch": 1})
    with open(p, "a") as f:
        f.write('{"epoch": 2, "lo')
    words: list[str] = []
    assert [r["epoch"] for r in xio.read_jsonl(p, warn=words.append)] == [1]
    assert len(words) == 1 and "torn" in words[0] and str(p) in words[0]
    xio.append_jsonl(p, {"epoch": 2})  # the next append starts on a line of its own
    assert [r["epoch"] for r in xio.read_jsonl(p)] == [1, 2]
    p.write_text('{"epoch": 1}\nnot json\n{"epoch": 3}\n')
    with pytest.raises(UserError, match=r"h\.jsonl.*line 2"):
        xio.read_jsonl(p)


# ----------------------------------------------------------------------------- strict config


@pytest.mark.parametrize("override,path", [
    ("train.epochs=true", r"train\.epochs"),
    ("train.batch_size=false", r"train\.batch_size"),
    ("train.optimizer.lr=.inf", r"train\.optimizer\.lr"),
    ("train.optimizer.weight_decay=.nan", r"train\.optimizer\.weight_decay"),
    ("students[1].params.alpha=true", r"students\[1\]\.params\.alpha"),
    ("students[1].params.T=.inf", r"students\[1\]\.params\.T"),
    ("data.params.train_size=true", r"data\.params\.train_size"),
    ("name.x=1", r"name: .*not a mapping"),
    ("train.epochs.x=1", r"train\.epochs: .*not a mapping"),
])
def test_lax_values_are_refused(tmp_path, capsys, override, path):
    import re

    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(tiny_experiment()))
    out = tmp_path / "run"
    rc, _, err = cli([tmp_path / "exp.yaml", "--set", override, "--out", out], capsys)
    assert rc == 2 and re.search(path, one_line(err)), err
    assert not out.exists()


@pytest.mark.parametrize("text,match", [
    (b"", "is empty"),
    (b"# nothing but a comment\n", "is empty"),
    (b"- data\n- teacher\n", "must be a mapping"),
    (b"name: caf\xe9\n", "not UTF-8"),
])
def test_bad_files_refused_before_a_run_folder(tmp_path, capsys, monkeypatch, text, match):
    (tmp_path / "exp.yaml").write_bytes(text)
    monkeypatch.chdir(tmp_path)
    rc, _, err = cli([tmp_path / "exp.yaml"], capsys)
    assert rc == 2 and match in one_line(err), err
    assert not (tmp_path / "runs").exists()


def test_huge_file_refused_before_parsing(tmp_path, capsys, monkeypatch):
    big = tmp_path / "big.yaml"
    with open(big, "wb") as f:
        f.truncate(50 * 2**20)  # sparse: 50 MB on paper
    monkeypatch.setattr(yaml, "safe_load", lambda *a, **k: pytest.fail("parsed a 50 MB file"))
    rc, _, err = cli([big, "--check"], capsys)
    assert rc == 2 and "50.0 MB" in one_line(err) and "1 MB" in one_line(err), err
    # refused before torch and the registries are even imported (a second, not 30 s and 1 GB)
    code = ("import sys; from xkd.run import main; rc = main([sys.argv[1], '--check']); "
            "print(rc, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, str(big)], capture_output=True, text=True, cwd=ROOT)
    assert proc.stdout.split() == ["2", "False"], proc.stdout + proc.stderr


# ----------------------------------------------------------------------------- one writer

HOLDER = textwrap.dedent("""
    import sys, time
    from xkd.runfolder import lock_run, write_status
    lock = lock_run(sys.argv[1])
    write_status(sys.argv[1], "running")
    print("locked", flush=True)
    time.sleep(120)
""")


@contextlib.contextmanager
def holder(run: Path):
    """Another process that holds the run's lock (and says 'running') until killed."""
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdout=subprocess.PIPE, text=True,
                         cwd=ROOT)
    try:
        assert p.stdout.readline().strip() == "locked"
        yield p
    finally:
        p.kill()
        p.wait()


def test_second_writer_refused_and_stale_lock_taken_over(done_run, tmp_path, capsys):
    from xkd.runfolder import run_state

    run = copy_run(done_run, tmp_path)
    (run / "summary.json").unlink()  # trained, but stopped before its summary
    hist = (run / "students" / "ce" / "history.jsonl").read_bytes()
    with holder(run) as p:
        assert run_state(run) == "running"
        rc, _, err = cli([done_run["exp"], "--resume", "--out", run], capsys)
        line = one_line(err)
        assert rc == 2 and f"pid {p.pid}" in line and socket.gethostname() in line, line
        assert (run / "students" / "ce" / "history.jsonl").read_bytes() == hist
    # killed (-9): the kernel released its lock; the run is interrupted and may be taken over
    assert run_state(run) == "interrupted"
    rc, out, err = cli([done_run["exp"], "--resume", "--out", run], capsys)
    assert rc == 0, err
    assert "interrupted" in out, out
    assert run_state(run) == "complete"
    assert (run / "students" / "ce" / "history.jsonl").read_bytes() == hist


def test_run_state_from_status(done_run, tmp_path):
    from xkd.runfolder import run_state, write_status

    run = copy_run(done_run, tmp_path)
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "complete" and status["pid"] == os.getpid()
    assert status["host"] == socket.gethostname() and status["heartbeat"] >= status["started"]
    assert run_state(run) == "complete"
    write_status(run, "failed", error="boom")
    assert run_state(run) == "failed"
    (run / "status.json").write_text(json.dumps({"format_version": 1, "state": "running", "pid": 1,
                                                 "host": "elsewhere.invalid", "heartbeat": 0.0}))
    assert run_state(run) == "complete"  # its writer is gone, but it got as far as summary.json
    (run / "summary.json").unlink()  # summary.json is written last: without it, not complete
    for age, want in ((5.0, "running"), (3600.0, "interrupted")):  # a writer on another machine
        (run / "status.json").write_text(json.dumps({
            "format_version": 1, "state": "running", "pid": 1, "host": "elsewhere.invalid",
            "started": time.time() - 7200, "heartbeat": time.time() - age}))
        assert run_state(run) == want


def test_heartbeat_moves_while_running(tmp_path):
    from xkd.runfolder import heartbeat, write_status

    write_status(tmp_path, "running")
    first = json.loads((tmp_path / "status.json").read_text())["heartbeat"]
    with heartbeat(tmp_path, interval=0.05):
        time.sleep(0.4)
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "running" and status["heartbeat"] > first


def test_viewer_says_interrupted(done_run, tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "apps"))
    from viewer_lib import page_overview
    from viewer_lib.runs import load_run

    run = copy_run(done_run, tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (run / "status.json").write_text(json.dumps({
        "format_version": 1, "state": "running", "pid": int(dead), "host": socket.gethostname(),
        "started": time.time() - 60, "heartbeat": time.time() - 30}))
    (run / "summary.json").unlink()
    info = load_run(str(run), time.time())
    assert info["state"] == "interrupted"
    said: list[tuple[str, str]] = []

    class Rec:
        def __getattr__(self, kind):
            return lambda msg, *a, **k: said.append((kind, msg))

    monkeypatch.setattr(page_overview, "st", Rec())
    page_overview.status_banner(info)
    assert said[0][0] == "warning" and "interrupted" in said[0][1] and "--resume" in said[0][1]
    assert not any("still running" in m for _, m in said)


# ----------------------------------------------------------------------------- paths


def test_run_folder_printed_in_full_before_anything(done_run):
    lines = done_run["stdout"].splitlines()
    assert lines[0] == f"[xkd] run folder: {done_run['run'].resolve()}"


@pytest.mark.parametrize("args", [["--set", "output.root=/etc"], ["--set", "output.root=../../../../../../usr"],
                                  ["--out", "/usr/lib/xkd-run"], ["--out", "/"]])
def test_system_folders_refused(tmp_path, capsys, args):
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(tiny_experiment()))
    before = {p: sorted(os.listdir(p)) for p in ("/etc", "/usr", "/usr/lib")}
    rc, _, err = cli([tmp_path / "exp.yaml", *args], capsys)
    assert rc == 2 and "system folder" in one_line(err), err
    assert {p: sorted(os.listdir(p)) for p in before} == before


# ----------------------------------------------------------------------------- divergence


def test_finite_blow_up_stops_the_run(tmp_path, capsys):
    exp = small()
    exp["teacher"]["train"] = {"epochs": 3, "optimizer": {"name": "adam", "lr": 1e6}}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(exp))
    run = tmp_path / "run"
    rc, _, err = cli([tmp_path / "exp.yaml", "--out", run], capsys)
    line = one_line(err)
    assert rc == 2 and "teacher: training diverged at epoch 1" in line and "train.diverge_factor" in line, line
    assert not (run / "teacher" / "last.pt").exists() and not (run / "students").exists()
    assert json.loads((run / "status.json").read_text())["state"] == "failed"
    from xkd.config import TrainConfig

    assert TrainConfig().diverge_factor == 1e3
    assert "first" in TrainConfig.model_fields["diverge_factor"].description


# ----------------------------------------------------------------------------- checkpoints, io


def test_weights_only_refusal_keeps_torchs_reason(tmp_path):
    marker = tmp_path / "MARKER"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UserError) as e:
        xio.torch_load(tmp_path / "evil.pt")
    msg = str(e.value)
    assert "unsupported GLOBAL" in msg and "system" in msg and "\n" not in msg, msg
    assert not marker.exists()


def test_last_is_written_before_best(tmp_path, capsys, monkeypatch):
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(small()))
    run = tmp_path / "run"
    inject(monkeypatch, errno.ENOSPC, nth("best.pt", 1, under="students"))
    rc, _, err = cli([tmp_path / "exp.yaml", "--out", run], capsys)
    assert rc == 2 and "best.pt" in one_line(err)
    last = torch.load(run / "students" / "ce" / "last.pt", weights_only=True)
    assert last["epoch"] == 1 and last["best_epoch"] == 1
    monkeypatch.undo()
    rc, _, err = cli([tmp_path / "exp.yaml", "--resume", "--out", run], capsys)
    assert rc == 0, err
    best = torch.load(run / "students" / "ce" / "best.pt", weights_only=True)
    assert best["epoch"] == 1
    for k, v in best["model"].items():  # the epoch-1 weights that last.pt holds
        torch.testing.assert_close(v, last["trainable"][k])


def test_atomic_writes_fsync_file_and_folder(tmp_path, monkeypatch):
    import stat

    synced: list[bool] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(stat.S_ISDIR(os.fstat(fd).st_mode)), real(fd)))
    xio.write_json(tmp_path / "a.json", {"x": 1})
    assert False in synced and True in synced


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_follow_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        xio.write_json(tmp_path / "a.json", {"x": 1})
        xio.torch_save(tmp_path / "b.pt", {"x": torch.zeros(1)})
        xio.append_jsonl(tmp_path / "c.jsonl", {"x": 1})
    finally:
        os.umask(old)
    for n in ("a.json", "b.pt", "c.jsonl"):
        assert (tmp_path / n).stat().st_mode & 0o777 == mode, n


def test_run_folder_files_readable_by_others(done_run):
    modes = {p.relative_to(done_run["run"]): p.stat().st_mode & 0o777
             for p in done_run["run"].rglob("*") if p.is_file()}
    assert modes and all(m == 0o644 for m in modes.values()), modes


def test_report_cli_is_a_writer_too(done_run, tmp_path, capsys):
    """``python -m xkd.report RUN`` writes into the run folder: not while another process does."""
    from xkd.report.cli import main as report_main

    run = copy_run(done_run, tmp_path)
    with holder(run) as p:
        rc = report_main([str(run)])
        line = one_line(capsys.readouterr().err)
        assert rc == 2 and f"pid {p.pid}" in line, line
    assert not (run / "report").exists()


@pytest.mark.parametrize("overrides,path", [
    (["teacher.model.name=wrn-16-2", "teacher.model.params.drop_rate=false"], r"teacher\.model\.params\.drop_rate"),
    (["students[0].model.params.width_mult=true", "students[0].model.name=mobilenetv2"],
     r"students\[0\]\.model\.params\.width_mult"),
    (["explain.method=integrated_gradients", "explain.params.n_steps=true"], r"explain\.params\.n_steps"),
])
def test_lax_values_in_registered_params_are_refused(tmp_path, capsys, overrides, path):
    """Model and explainer parameters follow the schema's rule: booleans are not numbers, floats finite."""
    import re

    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(tiny_experiment()))
    args = [tmp_path / "exp.yaml", "--check"] + [a for o in overrides for a in ("--set", o)]
    rc, _, err = cli(args, capsys)
    assert rc == 2 and re.search(path, one_line(err)), err


@pytest.mark.slow  # ~30 s on the shared 2-core machine: a fresh interpreter, then a resume
def test_killed_run_is_interrupted_and_resumes(tmp_path, capsys):
    """A real ``python -m xkd.run`` killed (-9) mid-training: its status still says running, but
    run_state (and so --resume and the viewer) says interrupted; --resume takes the folder over."""
    from xkd.runfolder import run_state

    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(small(train={"epochs": 4, "batch_size": 16})))
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "XKD_NO_PROGRESS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "xkd.run", str(tmp_path / "exp.yaml"), "--out", str(run)],
                         cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    hist = run / "teacher" / "history.jsonl"
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not (hist.is_file() and hist.read_text().count("\n") >= 1):
            assert p.poll() is None, "the run ended before it could be killed"
            time.sleep(0.05)
        assert run_state(run) == "running"
    finally:
        p.kill()
        p.wait()
    assert json.loads((run / "status.json").read_text())["state"] == "running"
    assert run_state(run) == "interrupted"
    rc, out, err = cli([tmp_path / "exp.yaml", "--resume", "--out", run], capsys)
    assert rc == 0, err
    assert "resuming a run that is interrupted" in out and "was interrupted; taking the run folder over" in out
    assert [json.loads(ln)["epoch"] for ln in hist.read_text().splitlines()] == [1, 2, 3, 4]
    assert run_state(run) == "complete" and tmp_files(run) == []
