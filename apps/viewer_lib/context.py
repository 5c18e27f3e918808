"""The sidebar: runs root, run, page and explainer; and the widget-state helpers the pages share.

The runs root comes from ``--runs`` (after ``--`` on the ``streamlit run`` line), ``XKD_RUNS``, or
``runs``; it is fixed for the life of the server and only shown (read-only) in the sidebar: nothing
on the page (widget, URL, session state) can move it, so whoever has the page sees only runs under
it. A run is picked from the folders found under the root or typed as a path (also ``?run=`` in the
URL); a path outside the root is refused (``xkd.runfolder.ensure_inside``). ``?page=overview|explorer|stages`` opens a page directly.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import streamlit as st

from viewer_lib.arrays import Explanations, load_explanations
from viewer_lib.runs import discover_runs, is_run, load_run, stamp

try:
    from xkd.errors import UserError
    from xkd.runfolder import ensure_inside
except ImportError:  # the viewer started from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from xkd.errors import UserError
    from xkd.runfolder import ensure_inside

PAGES = {"overview": "Overview", "explorer": "Sample explorer", "stages": "Stage view"}


@dataclass
class Ctx:
    """What every page gets: the root, the chosen run (small files), its explanations."""

    root: Path
    path: Path
    runs: list[str]
    run: dict[str, Any]
    stamp: float
    ex: Explanations | None
    explainer: str | None


def cli_runs_root(argv: Sequence[str] | None = None) -> str:
    """``--runs ROOT`` from the script arguments, else ``$XKD_RUNS``, else ``runs``."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--runs", default=None)
    args, _ = p.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    return args.runs or os.environ.get("XKD_RUNS") or "runs"


def choose(key: str, options: list[Any], default: Any = None) -> None:
    """Make ``st.session_state[key]`` one of ``options`` before its widget is created."""
    if options and st.session_state.get(key) not in options:
        st.session_state[key] = default if default in options else options[0]


def bound(widget: Callable[..., Any], label: str, options: list[Any], store: str, key: str,
          **kw: Any) -> Any:
    """A selection widget whose value survives page switches: ``store`` (a plain session key)
    holds the value, the widget ``key`` is re-initialised from it and writes back on change."""
    if st.session_state.get(store) in options:
        st.session_state[key] = st.session_state[store]
    choose(key, options)

    def sync() -> None:
        st.session_state[store] = st.session_state[key]

    value = widget(label, options, key=key, on_change=sync, **kw)
    st.session_state[store] = value
    return value


def resolve_run(root: Path, text: str) -> Path:
    """A typed run path (absolute, or relative to the root), refused when outside the root."""
    p = Path(text).expanduser()
    return ensure_inside(root, p if p.is_absolute() else root / p)


def _inside(root: Path, path: Path) -> bool:
    """Whether ``path`` resolves inside ``root`` (a symlink out of the root does not)."""
    try:
        ensure_inside(root, path)
    except UserError:
        return False
    return True


def sidebar() -> Ctx | None:
    """Draw the sidebar; ``None`` (after saying why in the main area) when no run can be shown."""
    qp = st.query_params
    sb = st.sidebar
    sb.title("xkd viewer")
    root_text = cli_runs_root()  # the command line's, on every rerun: not a widget, not session state
    root = Path(root_text).expanduser().resolve()
    sb.caption(f"Runs root: `{root}`", help="fixed when the viewer starts: `-- --runs ROOT`")
    page_keys = list(PAGES)
    if "page" not in st.session_state:
        st.session_state["page"] = qp.get("page") if qp.get("page") in PAGES else "overview"
    page = sb.radio("Page", page_keys, key="page", format_func=PAGES.get)
    if qp.get("page") != page:
        qp["page"] = page
    if not root.is_dir():
        st.warning(f"The runs root `{root_text}` does not exist. Start the viewer with "
                   "`streamlit run apps/viewer.py -- --runs ROOT` (or set XKD_RUNS).")
        return None
    runs = [r for r in discover_runs(root) if _inside(root, root / r)]
    typed = sb.text_input("Open a run by path", key="run_path", placeholder="relative to the root",
                          help="a run folder inside the runs root")
    want = typed.strip() or qp.get("run", "")
    path: Path | None = None
    if want and (want not in runs or typed.strip()):
        try:
            path = resolve_run(root, want)
        except UserError as e:
            sb.error("Refused: outside the runs root")
            st.error(f"Refused: {e}")
            return None
        if not is_run(path):
            st.error(f"`{want}` is not a run folder (no config.yaml, status.json, summary.json or "
                     "explanations/ in it).")
            return None
    if path is None:
        if not runs:
            st.info(f"No run folders under `{root_text}` yet. Create one with "
                    "`python -m xkd.run experiments/quickstart.yaml --out RUNS/NAME`.")
            return None
        choose("run", runs, want if want in runs else runs[0])
        rel = sb.selectbox("Run", runs, key="run")
        path = ensure_inside(root, root / rel)
        if qp.get("run") != rel:
            qp["run"] = rel
    st_ = stamp(path)
    run = load_run(str(path), st_)
    ex = load_explanations(str(path), st_)
    explainer = None
    if ex is not None and ex.explainers:
        choose("explainer", ex.explainers)
        explainer = sb.selectbox("Explainer", ex.explainers, key="explainer",
                                 help="which exported saliency map to compare")
    sb.caption(f"status: **{run['state']}** · {len(run['models'])} models")
    return Ctx(root=root, path=path, runs=runs, run=run, stamp=st_, ex=ex, explainer=explainer)
