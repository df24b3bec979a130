"""Typed errors of the clipdesk core, on top of the storage layer's (re-exported here).

The CLI turns any :class:`ClipdeskError` into a one-line message and exit code 1; the GUI shows it
in its one error area. Anything else is a bug and is shown as one.
"""
from __future__ import annotations

from clipdesk.indexer.errors import (  # noqa: F401 - re-exported for callers of the core
    CatalogCorruptError,
    ClipdeskError,
    DiskFullError,
    LibraryLockedError,
    LibraryNotFoundError,
    SchemaVersionError,
    UnreadableImageError,
)


class ModelError(ClipdeskError):
    """A model cannot be created or loaded (unknown name, bad checkpoint)."""


class ModelDownloadError(ModelError):
    """Weights are not cached locally and cannot be downloaded (offline, blocked network)."""


class ModelMismatchError(ClipdeskError):
    """A library's vectors were made by another model than the one asked for."""


class QueryError(ClipdeskError):
    """A search query that cannot be parsed or refers to a missing image."""


class ProbeError(ClipdeskError):
    """A probe that cannot be trained (no examples) or is not found."""


class ClusterError(ClipdeskError):
    """The cluster could not be reached or used (Ray missing, no cluster at the address, a job
    that failed on the workers). What was committed before stays."""
