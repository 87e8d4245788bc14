"""Storage backends behind one write-once ``Storage`` protocol."""

from .base import Storage, check_name
from .local import LocalStorage

__all__ = ["LocalStorage", "Storage", "check_name", "open_storage"]


def open_storage(url: str) -> Storage:
    """A Storage for a repository URL (a local path for now)."""
    from ...errors import UsageError
    from ..errors import RepositoryError

    if not url.strip():
        # an unset variable in a script: the working directory is never what was meant
        raise UsageError("the repository location is empty")
    if "://" in url:
        scheme = url.split("://", 1)[0]
        if scheme != "file":
            raise RepositoryError(
                f"repository URL {url!r}: scheme {scheme!r} is not supported yet "
                "(use a local path)"
            )
        url = url.split("://", 1)[1]
    return LocalStorage(url)
