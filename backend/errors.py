"""Errors that become a 4xx answer with a JSON body."""
from __future__ import annotations


class ApiError(Exception):
    status = 400

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class BadConfig(ApiError):
    """The label config lacks what the backend needs."""


class BadImage(ApiError):
    """A task's image cannot be fetched or decoded."""

    status = 422
