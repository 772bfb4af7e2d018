"""The small exception hierarchy users see as one-line messages.

Every error a user can cause (bad path, bad model, bad manifest, bad config) is an
``EdgeSegError``; the CLI prints ``str(err)`` on one line and exits non-zero. Anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations


class EdgeSegError(Exception):
    """Base class: a problem the user can fix; the message says what to do."""


class ModelError(EdgeSegError):
    """The model file is missing, unreadable or does not match its manifest."""


class ManifestError(ModelError):
    """The manifest is missing a field, has a wrong value, or disagrees with the model."""


class BackendUnavailable(EdgeSegError):
    """The runtime a backend needs is not installed; the message names the package."""


class InputError(EdgeSegError):
    """An input (image, directory, dataset) cannot be read or has the wrong layout."""


class StoreError(EdgeSegError):
    """The consumer's store (database, object storage) cannot be opened or used: bad URL, credentials,
    schema version; the message says what to do."""


class StoreUnavailableError(StoreError):
    """The store went away while running (connection lost, server shut down, disk full): the consumer
    acknowledges nothing more and exits non-zero, so its service manager restarts it."""


class FieldValueError(ValueError):
    """Raised by a config model's validator about one of its fields: the config error then names that field's
    path (``smoothing.hysteresis_low: ...``) instead of the section's. The message says what it got."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def field_path(loc) -> str:
    """A validation error's location as ``a.b.0.c``; a key that is not a plain name is quoted and escaped (a key
    from the input may hold a newline or be megabytes long: the message stays one short line)."""
    parts = []
    for part in loc:
        text = str(part)
        plain = isinstance(part, int) or (0 < len(text) <= 64 and all(c.isalnum() or c in "_-" for c in text))
        parts.append(text if plain else repr(text[:40]))
    return ".".join(parts)
