"""Domain errors of the registry. The CLI turns each into one clear message (no traceback)."""


class RegistryError(Exception):
    """Base class of every error the registry reports to a user."""


class NotFound(RegistryError):
    """No entry matches an id, name, path or trigger word."""


class Ambiguous(RegistryError):
    """A name or trigger word matches several entries."""


class InvalidInput(RegistryError):
    """A file or record cannot be used; the message names the file and the problem."""


class IndexUnavailable(RegistryError):
    """The embedding model or the FAISS index cannot be loaded."""
