"""Command lines: flags generated from a config dataclass and its field docstrings, an argparse
parser whose errors are one line (exit 2), and the README glossary tables (`glossary`)."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import typing
from typing import Any

from tuner.config import build, field_types


def one_line(err: Exception) -> str:
    """The error message on one line (YAML and torchvision messages span several)."""
    return " ".join(str(err).split())


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each dataclass field (as tyro / cleanrl read them)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(inspect.getsource(klass))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump), exit status 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, cls: type, title: str | None = None,
                  defaults: dict[str, Any] | None = None) -> None:
    """Add one flag per field of `cls`; unset flags stay out of the namespace (SUPPRESS). `defaults`: the
    values this command uses in place of some of the dataclass's defaults (shown as the default)."""
    group = parser.add_argument_group(title or cls.__name__)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        kind, optional = field_types(cls)[f.name]
        default = f.default if f.default is not dataclasses.MISSING else None
        default = (defaults or {}).get(f.name, default)
        help_text = docs.get(f.name, "") + ("" if default is None else f" [default: {default}]")
        help_text = help_text.replace("%", "%%")  # argparse %-formats help strings ("25% of its memory")
        if kind is bool:
            group.add_argument(flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS, help=help_text)
        elif kind is tuple:
            group.add_argument(flag(f.name), dest=f.name, nargs="+", default=argparse.SUPPRESS, help=help_text)
        else:
            group.add_argument(flag(f.name), dest=f.name, type=kind, default=argparse.SUPPRESS,
                               metavar=kind.__name__.upper(), help=help_text)


def from_namespace(cls: type, namespace: argparse.Namespace, **overrides: Any) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(namespace).items() if k in names}
    values.update(overrides)
    for key, value in values.items():
        if isinstance(value, list):
            values[key] = tuple(value)
    return build(cls, values)


def glossary(cls: type, other: tuple[str, dict[str, Any]] | None = None) -> str:
    """A markdown table of the fields of `cls` (the README glossary is generated from this). `other`:
    (a command, the defaults it uses instead), shown beside the dataclass's own."""
    rows = ["| flag | default | meaning |", "| --- | --- | --- |"]
    for f in dataclasses.fields(cls):
        default = f"`{f.default}`" if f.default is not dataclasses.MISSING else "``"
        if other is not None and f.name in other[1]:
            default += f" ({other[0]}: `{other[1][f.name]}`)"
        text = field_docs(cls)[f.name].replace("|", "\\|")
        rows.append(f"| `{flag(f.name)}` | {default} | {text} |")
    return "\n".join(rows)
