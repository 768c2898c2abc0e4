"""Notice when a mounted file's content changes.

Kubernetes updates ConfigMap and Secret volumes by swapping a symlink to a new directory,
so the file at the mounted path never changes in place: what changes is the file the
path resolves to. Following the path on every check (and comparing content, not only
mtime) catches both that and plain edits.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


class FileWatch:
    """Reports a file's new content once each time it changes."""

    def __init__(self, path: Path):
        self.path = path
        self._stat: tuple[int, ...] | None = None
        self._digest: str | None = None

    def changed(self) -> bytes | None:
        """The content when it differs from the last content returned, else None."""
        try:
            st = os.stat(self.path)  # follows the symlink chain to the current file
        except FileNotFoundError:
            return None
        key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        if key == self._stat:
            return None
        content = self.path.read_bytes()
        self._stat = key
        digest = hashlib.sha256(content).hexdigest()
        if digest == self._digest:
            return None
        self._digest = digest
        return content
