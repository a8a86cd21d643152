"""How a remote policy server names a trained version of its policy: `<base>@<scope>/<version>`, such as
`segagent-qwen@project-3/v2`. The backend asks for that name; the server loads that version's LoRA
adapter from the registry folder both share."""
from __future__ import annotations

import re

from model.flywheel.scopes import SCOPE_PATTERN

_VERSIONED = re.compile(rf"(?P<base>[^@/\s]{{1,100}})@(?P<scope>{SCOPE_PATTERN})/(?P<version>v\d{{1,6}})")


def versioned_model(base: str, scope: str, version: str) -> str:
    return f"{base}@{scope}/{version}"


def parse_versioned_model(name: str) -> tuple[str, str, str] | None:
    """(base, scope, version) of a versioned name; None for any other name."""
    match = _VERSIONED.fullmatch(name or "")
    return (match["base"], match["scope"], match["version"]) if match else None
