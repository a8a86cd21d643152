"""The errors a request can meet, and the one table that turns them into HTTP statuses.

Request code raises a domain error (or lets one of model/'s typed errors through); only the edge
(app.py) looks a status up here. An exception found in no row is a bug: a 500 and a logged traceback.
"""
from __future__ import annotations

import errno
import sqlite3

from model.core.imageio import ImageError, ImageTooLarge
from model.flywheel.registry import RegistryError, UnknownVersion
from model.policies.base import PolicyError
from model.tools.base import ToolInputError


class DomainError(Exception):
    """An error whose message is meant for the client."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidRequest(DomainError):
    """The request body, a query parameter or a label config is malformed or unsupported."""


class InvalidLabelConfig(InvalidRequest):
    """The label config lacks what the backend needs."""


class ImageReferenceInvalid(InvalidRequest):
    """A task's image field names nothing the backend may fetch (a file path, ftp, ...)."""


class ImageForbidden(DomainError):
    """A task's image lives on a host the backend must not reach."""


class ImageTooBig(DomainError):
    """A task's image has more bytes or pixels than allowed."""


class MasksTooLarge(InvalidRequest):
    """A request's masks (brush or polygon regions) would take more pixels, all together, than allowed (413; an
    InvalidRequest, so that where the task's stored data is read, such masks are skipped with a warning)."""


class ImageUnavailable(DomainError):
    """A task's image cannot be fetched or decoded."""


class NotFound(DomainError):
    """A project, version or job that does not exist."""


class Gone(DomainError):
    """A training job this backend no longer knows."""


class Conflict(DomainError):
    """The request contradicts what the backend keeps (an annotation id that another project's annotation has)."""


class LabelStudioFailed(DomainError):
    """Label Studio's API answered with an error, or not at all."""


class CapabilityOff(DomainError):
    """What the request needs is off on this backend (no tool, no policy); the message says why."""


class StorageFull(DomainError):
    """The backend's data folder has no room for what the request would keep: nothing is acknowledged."""


class Busy(DomainError):
    """More requests of a kind at once than the backend takes: 503 with Retry-After, never queued."""

    retry_after = 1


STATUS_BY_ERROR: dict[type[Exception], int] = {
    ImageReferenceInvalid: 400,
    InvalidLabelConfig: 400,
    InvalidRequest: 400,
    ToolInputError: 400,
    ImageForbidden: 403,
    NotFound: 404,
    UnknownVersion: 404,
    RegistryError: 400,
    Conflict: 409,
    Gone: 410,
    ImageTooBig: 413,
    ImageTooLarge: 413,
    MasksTooLarge: 413,
    ImageUnavailable: 422,
    ImageError: 422,
    LabelStudioFailed: 502,
    CapabilityOff: 503,
    Busy: 503,
    PolicyError: 503,
    StorageFull: 507,
}


POSTGRES_DISK_FULL = "53100"


def out_of_space(exc: BaseException | None) -> bool:
    """Whether an error, or one it was raised from, says the disk (or the database's size limit) is full."""
    while exc is not None:
        if (isinstance(exc, StorageFull) or getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
                or getattr(exc, "sqlstate", None) == POSTGRES_DISK_FULL
                or (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT))):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def status_for(exc: Exception) -> int | None:
    """The HTTP status of an error (its most specific row), None when it is no known error. A store that could
    not write for lack of space, whichever store it is, is a 507: nothing was kept."""
    if out_of_space(exc):
        return 507
    for cls in type(exc).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return None


def message_for(exc: Exception) -> str:
    if out_of_space(exc) and not isinstance(exc, StorageFull):
        return f"not kept: the backend's data folder is full ({type(exc).__name__}: {exc})"
    if isinstance(exc, PolicyError):
        return f"the policy is unavailable: {exc}"
    return exc.message if isinstance(exc, DomainError) else str(exc)
