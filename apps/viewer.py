"""xkd explanation viewer (DESIGN 1 and 5): browse run folders, never train, never hook a model.

    streamlit run apps/viewer.py -- --runs runs/

Pages: Overview (summary table, training, deletion/insertion and alignment curves), Sample explorer
(image, mask, teacher and student saliency, ABF attention maps per stage, alignment values) and
Stage view (one student's stages with the teacher map pooled to each). ``?page=explorer`` and
``?run=NAME`` in the URL open a page and a run directly.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import streamlit as st

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from viewer_lib import page_explorer, page_overview, page_stages  # noqa: E402
from viewer_lib.context import sidebar  # noqa: E402

RENDER = {"overview": page_overview.render, "explorer": page_explorer.render, "stages": page_stages.render}


def main() -> None:
    st.set_page_config(page_title="xkd viewer", layout="wide")
    name = "this run"
    try:
        ctx = sidebar()
        if ctx is None:
            return
        name = ctx.run["name"]
        RENDER[st.session_state.get("page", "overview")](ctx)
    except Exception as e:  # noqa: BLE001 - a damaged artifact must not show a stack trace
        traceback.print_exc(file=sys.stderr)
        st.error(f"Could not show this page for {name}: {type(e).__name__}: {e}. "
                 "Some artifact of the run is damaged or in an unexpected format.")


main()
