"""Where the tests find the repository and the shared data, wherever in tests/ a test module sits."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# The real data sets, read in place beside the repository (never copied into it; see ../shared/data/README).
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
