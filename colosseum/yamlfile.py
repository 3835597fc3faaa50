"""Load a YAML file into a pydantic model, reporting every problem with its field path and line.

Inventories are written by hand, often in a hurry before a reservation ends;
an error that says ``srns.2.role (line 14): Input should be 'wifi', ...``
costs seconds, one that says "validation error" costs the reservation.
Shared by the Colosseum and Raspberry Pi inventories.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from experiment.testbed import TestbedError

Model = TypeVar("Model", bound=BaseModel)

SECRET_WORDS = ("password", "passphrase", "secret", "psk", "token")


def _line_of(root: yaml.Node, loc: tuple) -> int | None:
    """1-based line of the YAML node at ``loc`` (the deepest one that exists)."""
    node, mark = root, getattr(root, "start_mark", None)
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if k.value == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            match = node.value[part]
        else:
            match = None
        if match is None:
            break
        node, mark = match, match.start_mark
    return mark.line + 1 if mark is not None else None


def _secret_keys(data: object, path: str = "") -> list[str]:
    """Keys that look like an inline secret (``password: hunter2``); names of env vars (``*_env``) are fine."""
    found = []
    if isinstance(data, dict):
        for key, value in data.items():
            here = f"{path}.{key}" if path else str(key)
            lowered = str(key).lower()
            if any(word in lowered for word in SECRET_WORDS) and not lowered.endswith("_env"):
                found.append(here)
            found += _secret_keys(value, here)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            found += _secret_keys(value, f"{path}.{i}")
    return found


def load_validated(path: Path | str, model: type[Model], *, what: str) -> Model:
    """Parse ``path`` and validate it as ``model``; raise TestbedError naming each bad field and its line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise TestbedError(f"{what} file {path} does not exist")
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise TestbedError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise TestbedError(f"{path}: a {what} is a mapping of fields")
    secrets = _secret_keys(data)
    if secrets:
        raise TestbedError(f"{path}: {', '.join(secrets)} would put a secret in the {what}; keep secrets out of "
                           "files that get shared: name the environment variable that holds it instead "
                           "(a field ending in _env), or use your ssh config and agent")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "tuple["))))
            field = ".".join(str(p) for p in loc) or f"({what})"
            line = _line_of(root, loc)
            lines.append(f"  {field} (line {line}): {err['msg']}" if line else f"  {field}: {err['msg']}")
        raise TestbedError(f"{path}: invalid {what}:\n" + "\n".join(lines)) from None
