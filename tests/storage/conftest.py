from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gossipkv.storage import _reads

# The crash writer and the tests share _helpers.py; make it importable as a plain module.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(params=["page-cache", "thread"])
def read_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """How the log engine reads a record: on the event loop when the page cache holds it
    (``RWF_NOWAIT``, what a test's freshly written records meet), or, with that turned off, in
    the reader thread (what a record only on disk meets). Tests that read take both."""
    path: str = request.param
    if path == "thread":
        monkeypatch.setattr(_reads, "_RWF_NOWAIT", None)
    elif _reads._RWF_NOWAIT is None:
        pytest.skip("this platform has no RWF_NOWAIT")
    return path
