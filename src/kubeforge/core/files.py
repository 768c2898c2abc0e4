"""Files replaced whole: a process killed while writing one leaves its previous content, never half of the new."""

from __future__ import annotations

import os
from pathlib import Path


def replace_whole(path: Path, content: str | bytes) -> None:
    """Write content beside path, then rename it over path: a rename within a directory is atomic."""
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(content, str):
        tmp.write_text(content)
    else:
        tmp.write_bytes(content)
    os.replace(tmp, path)
