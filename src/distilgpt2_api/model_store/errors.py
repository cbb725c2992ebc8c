"""The one exception type the model store raises."""

from __future__ import annotations


class ModelStoreError(RuntimeError):
    """A model could not be prepared or fetched; the message names the thing that failed."""


class NetworkUnavailableError(ModelStoreError):
    """The remote (Hub, PyPI, S3 endpoint) could not be reached: the one failure `auto` falls back on."""
