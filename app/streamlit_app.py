"""GPT-2 Workbench app: `streamlit run app` from the repository root.

The entry script sets up navigation and the run picker (both kept across pages); each page lives
in app/views/. Runs are read from $WORKBENCH_RUNS or ./runs and never written, except that a page
may ask the probes runner to fill in missing results.
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # works without `pip install -e .` too
    sys.path.insert(0, str(ROOT))

import os  # noqa: E402

import streamlit as st  # noqa: E402

from app import ui  # noqa: E402
from model.device import set_torch_threads  # noqa: E402

# The app runs small models one prompt at a time: there one intra-op thread is as fast as two on an
# idle machine and 10-100x faster on a busy one (where OpenMP threads wait on each other); a
# larger model on a free machine can ask for more with WORKBENCH_THREADS.
set_torch_threads(max(1, int(os.environ.get("WORKBENCH_THREADS", "1") or 1)))

st.set_page_config(page_title="GPT-2 Workbench", page_icon=":material/biotech:", layout="wide")

PAGES = [
    st.Page("views/runs.py", title="Runs", icon=":material/show_chart:", default=True),
    st.Page("views/heads.py", title="Heads", icon=":material/grid_view:"),
    st.Page("views/attention.py", title="Attention", icon=":material/visibility:"),
    st.Page("views/memorization.py", title="Memorization", icon=":material/lock:"),
    st.Page("views/repetition.py", title="Repetition", icon=":material/repeat:"),
    st.Page("views/induction.py", title="Induction", icon=":material/extension:"),
    st.Page("views/prompt.py", title="Prompt", icon=":material/edit_note:"),
    st.Page("views/circuits.py", title="Circuits", icon=":material/hub:"),
    st.Page("views/stages.py", title="Stages", icon=":material/stairs:"),
    st.Page("views/compare.py", title="Compare runs", icon=":material/compare_arrows:"),
    st.Page("views/new_run.py", title="New run", icon=":material/play_arrow:"),
]

navigation = st.navigation(PAGES)
ui.guarded(lambda: ui.sidebar_run_picker(follow=navigation.title != "New run"))
navigation.run()
