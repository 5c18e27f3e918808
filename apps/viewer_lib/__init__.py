"""Helpers of the Streamlit viewer (apps/viewer.py): run-folder readers (runs, arrays), numpy
alignment numbers (alignment), tiles and charts (figures), the sidebar (context) and one module
per page (page_overview, page_explorer, page_stages). Imports nothing from xkd but the path check and
``xkd.runfolder.run_state`` (whether a run's writer is alive)."""
