"""flowsense: find covert or abnormal egress in packets, flows and firewall logs."""

import os
import tempfile
from pathlib import Path

__version__ = "0.1.0"


def _numba_cache_dir() -> None:
    """Numba caches compiled kernels beside the sources and fails when it cannot write there (a
    root-owned install run by another user, a read-only image).  Such users get a cache of their
    own instead; NUMBA_CACHE_DIR, when set, is left alone."""
    if "NUMBA_CACHE_DIR" in os.environ or os.access(Path(__file__).parent, os.W_OK):
        return
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    if not os.access(base if os.path.isdir(base) else os.path.dirname(base), os.W_OK):
        base = tempfile.gettempdir()
    os.environ["NUMBA_CACHE_DIR"] = os.path.join(base, f"flowsense-numba-{os.getuid()}")


_numba_cache_dir()
