"""Profile YAML read with the line of every value, environment substitution, and no YAML 1.1 surprises.

PyYAML's safe loader turns `NO` (Norway) into False, `10:30` into 630 and `2024-01-05` into a date, and
silently keeps the last of two equal keys. Profiles use a stricter resolver: booleans are only
true/false, integers and floats only their plain decimal forms, timestamps stay strings, and a
duplicate key is an error. Values are built from the composed node tree so each JSON path maps to the
line it came from.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

JsonPath = tuple[str | int, ...]
MAX_NODES = 200_000  # a bound on alias expansion ("billion laughs")

_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ProfileYamlLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2-like plain scalars (see the module docstring)."""


ProfileYamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL, _INT, _FLOAT, _TIMESTAMP)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ProfileYamlLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
ProfileYamlLoader.add_implicit_resolver(_INT, re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"), list("-+0123456789"))
ProfileYamlLoader.add_implicit_resolver(
    _FLOAT, re.compile(r"^[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?$|^[-+]?[0-9]+[eE][-+]?[0-9]+$"),
    list("-+.0123456789"),
)


class YamlProblem(Exception):
    def __init__(self, line: int | None, reason: str) -> None:
        super().__init__(reason)
        self.line = line
        self.reason = reason


class _Builder:
    def __init__(self, loader: ProfileYamlLoader, environ: Mapping[str, str]) -> None:
        self.loader = loader
        self.environ = environ
        self.lines: dict[JsonPath, int] = {}
        self.problems: list[YamlProblem] = []
        self.nodes = 0

    def build(self, node: Node, path: JsonPath) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise YamlProblem(node.start_mark.line + 1, "document too large (alias expansion?)")
        self.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, ScalarNode):
                    self.problems.append(YamlProblem(key_node.start_mark.line + 1, "mapping keys must be plain text"))
                    continue
                if key_node.tag == "tag:yaml.org,2002:merge":
                    self.problems.append(YamlProblem(key_node.start_mark.line + 1, "merge keys (<<) are not supported"))
                    continue
                key = str(key_node.value)
                if key in out:
                    self.problems.append(YamlProblem(key_node.start_mark.line + 1, f"duplicate key {key!r}"))
                    continue
                self.lines[(*path, key)] = key_node.start_mark.line + 1
                out[key] = self.build(value_node, (*path, key))
            return out
        if isinstance(node, SequenceNode):
            return [self.build(item, (*path, index)) for index, item in enumerate(node.value)]
        assert isinstance(node, ScalarNode)
        value = self.loader.construct_object(node, deep=True)
        if isinstance(value, str) and "${" in value:
            return self.substitute(node, value)
        return value

    def substitute(self, node: ScalarNode, text: str) -> Any:
        line = node.start_mark.line + 1
        missing: list[str] = []

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in self.environ:
                return self.environ[name]
            if default is not None:
                return default
            missing.append(name)
            return match.group(0)  # left as written: the problem is reported once, not again by the schema

        result = _ENV.sub(replace, text)
        for name in missing:
            self.problems.append(YamlProblem(line, f"environment variable {name} is not set (and has no default)"))
        if node.style is None and _ENV.fullmatch(text):
            # A plain `${RETRIES:-1}` means the number 1, as if it had been written in place.
            tag = self.loader.resolve(ScalarNode, result, (True, False))  # type: ignore[no-untyped-call]
            return self.loader.construct_object(ScalarNode(tag, result, node.start_mark, node.end_mark), deep=True)
        return result


def load_yaml(text: str, environ: Mapping[str, str]) -> tuple[Any, dict[JsonPath, int], list[YamlProblem]]:
    """The document's value, the line of each JSON path, and the problems found (syntax problems raise)."""
    loader = ProfileYamlLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            raise YamlProblem(mark.line + 1 if mark else None, f"YAML syntax: {exc.problem or exc.context}") from None
        except yaml.YAMLError as exc:
            raise YamlProblem(None, f"YAML: {exc}") from None
        if node is None:
            raise YamlProblem(1, "the file is empty")
        builder = _Builder(loader, environ)
        try:
            value = builder.build(node, ())
        except yaml.constructor.ConstructorError as exc:
            mark = exc.problem_mark
            raise YamlProblem(mark.line + 1 if mark else None, f"YAML: {exc.problem}") from None
        return value, builder.lines, builder.problems
    finally:
        loader.dispose()


def line_of(lines: Mapping[JsonPath, int], path: JsonPath) -> int | None:
    """The line of `path`, or of its nearest ancestor that has one."""
    for end in range(len(path), -1, -1):
        line = lines.get(tuple(path[:end]))
        if line is not None:
            return line
    return None
