"""How the registries name a scope (a Label Studio project, "project-3", or "shared"), a version and a job."""
from __future__ import annotations

import re

BASE_VERSION = "v0"  # the policy or scorer as shipped: no trained version
SHARED_SCOPE = "shared"
PROJECT_DIGITS = 12  # Label Studio numbers projects with a 32-bit serial: 10 digits at most
SCOPE_PATTERN = rf"(shared|project-\d{{1,{PROJECT_DIGITS}}})"
VERSION = re.compile(r"^v(0|[1-9]\d{0,5})$")  # one spelling a version: "v01" would name v1 and be shown apart
JOB = re.compile(rf"^{SCOPE_PATTERN}_\d+_[0-9a-f]{{6}}$")  # also a valid RQ job id


class RegistryError(ValueError):
    """A scope, version or job that does not exist or is not well-formed."""


def is_project_id(project: object) -> bool:
    """A Label Studio project id that has a scope: up to PROJECT_DIGITS decimal digits."""
    text = str(project)
    return text.isascii() and text.isdigit() and len(text.lstrip("0") or "0") <= PROJECT_DIGITS


def scope_for(project: str, shared: bool = False) -> str:
    if shared:
        return SHARED_SCOPE
    if not is_project_id(project):
        raise RegistryError(f"a project id is a number of up to {PROJECT_DIGITS} digits, not {str(project)[:40]!r}")
    return f"project-{int(project)}"


def project_of(scope: str) -> str | None:
    """The Label Studio project of a scope; None for the shared scope."""
    return None if scope == SHARED_SCOPE else scope.split("-", 1)[1]


def job_scope(job_id: str) -> str:
    return job_id.rsplit("_", 2)[0]
