"""Load a YAML file into a pydantic model, reporting every problem with its field path and line.

Scenarios and inventories are written by hand, often in a hurry before a
reservation ends; an error that says ``srns.2.role (line 14): Input should be
'wifi', ...`` costs seconds, one that says "validation error" costs the
reservation.  Duplicate keys are refused (YAML keeps the last one silently),
and files that share easily (inventories) may be checked for inline secrets.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from payload.errors import JarvisError

Model = TypeVar("Model", bound=BaseModel)
Problem = tuple[tuple, str]  # (field path, message)

SECRET_WORDS = ("password", "passphrase", "secret", "psk", "token")


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with the same key twice (naming both lines)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:
                continue  # an unhashable key: construct_mapping reports it
            if first != key_node.start_mark.line + 1:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice (lines {first} and {key_node.start_mark.line + 1})",
                    key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def parse(text: str) -> tuple[object, yaml.Node | None]:
    """The document and its node tree (for line numbers); raises yaml.YAMLError."""
    loader = _UniqueKeyLoader(text)
    try:
        root = loader.get_single_node()
        return (loader.construct_document(root) if root is not None else None), root
    finally:
        loader.dispose()


def line_of(root: yaml.Node | None, loc: Iterable) -> int | None:
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


def secret_keys(data: object, path: str = "") -> list[str]:
    """Keys that look like an inline secret (``password: hunter2``); names of env vars (``*_env``) are fine."""
    found = []
    if isinstance(data, dict):
        for key, value in data.items():
            here = f"{path}.{key}" if path else str(key)
            lowered = str(key).lower()
            if any(word in lowered for word in SECRET_WORDS) and not lowered.endswith("_env"):
                found.append(here)
            found += secret_keys(value, here)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            found += secret_keys(value, f"{path}.{i}")
    return found


def describe_problems(problems: list[Problem], root: yaml.Node | None, what: str) -> str:
    lines = []
    for loc, message in problems:
        field = ".".join(str(p) for p in loc) or f"({what})"
        line = line_of(root, loc)
        lines.append(f"  {field} (line {line}): {message}" if line else f"  {field}: {message}")
    return "\n".join(lines)


def load_validated(path: Path | str, model: type[Model], *, what: str, error: type[JarvisError],
                   forbid_secrets: bool = False, checks: Callable[[Model], list[Problem]] | None = None) -> Model:
    """Parse ``path`` and validate it as ``model``; raise ``error`` naming each bad field and its line.

    ``checks`` adds rules that span fields (a fault's token beyond the tokens
    generated, a link for a node that does not exist); it returns (field path,
    message) pairs, reported with their lines like the model's own errors.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise error(f"{what} file {path} does not exist")
    try:
        data, root = parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read it: {exc}") from None
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: a {what} is a mapping of fields")
    if forbid_secrets and (secrets := secret_keys(data)):
        raise error(f"{path}: {', '.join(secrets)} would put a secret in the {what}; keep secrets out of "
                    "files that get shared: name the environment variable that holds it instead "
                    "(a field ending in _env), or use your ssh config and agent")
    try:
        value = model.model_validate(data)
    except ValidationError as exc:
        problems = [(tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "tuple[")))),
                     err["msg"].removeprefix("Value error, ")) for err in exc.errors()]
        raise error(f"{path}: invalid {what}:\n" + describe_problems(problems, root, what)) from None
    problems = checks(value) if checks else []
    if problems:
        raise error(f"{path}: invalid {what}:\n" + describe_problems(problems, root, what))
    return value


def roster_problem(keys: list, roles: list[str], *, noun: str, key: str = "names") -> str | None:
    """What is wrong with an inventory's list of hosts: a repeated key, or not exactly one end-user host."""
    if len(set(keys)) != len(keys):
        return f"{noun} {key} repeat: {sorted(k for k in set(keys) if keys.count(k) > 1)}"
    users = roles.count("user")
    if users != 1:
        return f"exactly one {noun} needs role user (the end-user node), found {users}"
    return None

