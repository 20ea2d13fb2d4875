from __future__ import annotations

import sys
from pathlib import Path

# The crash writer and the tests share _helpers.py; make it importable as a plain module.
sys.path.insert(0, str(Path(__file__).parent))
