"""The string rewriting a kubelet does to a container's command, args and env, plus the local twist.

Kubernetes expands ``$(VAR)`` references from the container's env (``$$`` escapes, an
unknown reference stays as written). Locally, paths under a volumeMount's mountPath
must point at the directory that stands in for the volume, and declared ports get a
free loopback port each, announced through ``KUBEFORGE_PORT_<NAME>``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion of text with env."""

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _REF.sub(sub, text)


def port_env_name(port_name: str) -> str:
    """The env var through which a container learns the local number of its named port."""
    return "KUBEFORGE_PORT_" + port_name.upper().replace("-", "_")


class PathRewriter:
    """Replaces mount paths used as path prefixes with the local directories standing in for them."""

    def __init__(self, mounts: Mapping[str, str]):
        self.mounts = {path.rstrip("/") or "/": local for path, local in mounts.items()}
        alternatives = "|".join(re.escape(p) for p in sorted(self.mounts, key=len, reverse=True))
        # A mount path counts where it starts a path (start, or after "=", ":", a space...) and
        # ends at a path boundary, so /etc/kubeforge does not match inside /etc/kubeforge-old.
        self._pattern = re.compile(rf"(?<![\w./-])({alternatives})(?=/|$|[^\w.-])") if self.mounts else None

    def __call__(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(lambda m: self.mounts[m.group(1)], text)
