"""Write a file so that no reader, and no restart after a crash, ever sees half of it.

Reports, saved plans and trash indexes are read by people, scripts and later passes; each
is written to a temporary file in the same directory and renamed into place.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


def write_text(path: Path, text: str | Iterable[str]) -> None:
    """Create the parent directory if needed, write beside the target, then rename.

    ``text`` may come in pieces (a large JSON report, one repository at a time), so it is
    never whole in memory; the target appears only once every piece is written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, prefix=".tmp-") as tmp:
        try:
            tmp.writelines([text] if isinstance(text, str) else text)
        except BaseException:
            tmp.close()
            os.unlink(tmp.name)
            raise
    os.replace(tmp.name, path)
