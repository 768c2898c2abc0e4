"""``python -m kubeforge.local.runner``: the runner process, startable before any CLI wiring."""

from ..commands import runner

runner()
