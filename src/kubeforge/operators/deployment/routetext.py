"""A route table's text, written once per content: a pass whose table has not changed reuses it.

Every pass of a ModelDeployment plans its route table again, and one is due every 2 seconds while a canary or shadow is
live, whose table changes only at a step. Writing the YAML is most of a pass once the table carries drift baselines,
even as JSON text (routes.VersionDrift): 1 ms at 20 features, 10 to 14 ms at 300 (docs/benchmarks.md, Gateway, "A large
route table"), against a fifth of that for a digest of its JSON, which finds the text written before. The texts are kept
newest first up to MAX_BYTES, so a large table costs memory only while it is among the latest written.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from typing import Any

from ...core import yamltext

MAX_BYTES = 8 * 1024 * 1024
"""The most text kept: every table of a few hundred ModelDeployments without baselines, or a dozen near the
ConfigMap's 1 MiB."""


class Texts:
    """Route tables' YAML by a digest of their content; passes run in several threads."""

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._texts: OrderedDict[bytes, str] = OrderedDict()
        self._lock = threading.Lock()

    def text(self, wire: dict[str, Any]) -> str:
        """The YAML of a table (its wire form): lists of plain values in flow style, one item after another."""
        key = hashlib.sha1(json.dumps(wire, sort_keys=True).encode()).digest()
        with self._lock:
            found = self._texts.get(key)
            if found is not None:
                self._texts.move_to_end(key)
                return found
        text = yamltext.dump(wire, sort_keys=True, default_flow_style=None, width=120)
        with self._lock:
            if key not in self._texts:
                self._texts[key] = text
                self.size += len(text)
                while self.size > self.max_bytes and len(self._texts) > 1:
                    _, oldest = self._texts.popitem(last=False)
                    self.size -= len(oldest)
        return text


TEXTS = Texts()
