"""Write a file so that no reader, and no restart after a crash, ever sees half of it.

Reports, saved plans and trash indexes are read by people, scripts and later passes; each
is written to a temporary file in the same directory and renamed into place.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_text(path: Path, text: str) -> None:
    """Create the parent directory if needed, write beside the target, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, prefix=".tmp-") as tmp:
        tmp.write(text)
    os.replace(tmp.name, path)
