"""``python -m kubeforge.serving``: the serving commands without the rest of the CLI (serving pods)."""

from .commands import serving

serving()
