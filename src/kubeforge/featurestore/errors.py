"""Why a FeatureView's source cannot be used, apart from the code that finds out.

The operators name these reasons in conditions; keeping the classes here means importing them
costs nothing, where the checks themselves (sources.py) bring pandas, pyarrow and fsspec along.
"""

from __future__ import annotations


class SourceError(Exception):
    """The source cannot be used; reason is the condition reason a FeatureView reports."""

    reason = "SourceError"


class SourceNotFound(SourceError):
    reason = "SourceNotFound"


class SchemaMismatch(SourceError):
    reason = "SchemaMismatch"
