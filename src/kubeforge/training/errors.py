"""The one exception type the trainer reports to users.

A :class:`TrainerError` is a problem with the job's input (spec, data, user model) that
a user fixes, so the entry point prints its message alone instead of a traceback, and
Kubernetes shows it as the pod's termination message.
"""

from __future__ import annotations


class TrainerError(Exception):
    """A problem the user can fix; each message names the field or file at fault."""
