from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gossipkv.storage import _reads

# The crash writer and the tests share _helpers.py; make it importable as a plain module.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def nowait_reads(tmp_path: Path) -> None:
    """Skip unless reads on the event loop work here (``RWF_NOWAIT`` on ``tmp_path``)."""
    if not _reads.nowait_reads_work(tmp_path):
        pytest.skip("no RWF_NOWAIT reads on this kernel or file system")


@pytest.fixture(params=["page-cache", "thread"])
def read_path(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> str:
    """How the log engine reads a record: on the event loop when the page cache holds it
    (``RWF_NOWAIT``, what a test's freshly written records meet), or, with that turned off, in
    the reader thread (what a record only on disk meets). Tests that read take both."""
    path: str = request.param
    if path == "thread":
        monkeypatch.setattr(_reads, "_RWF_NOWAIT", None)
    elif not _reads.nowait_reads_work(tmp_path):
        pytest.skip("no RWF_NOWAIT reads on this kernel or file system")
    return path
