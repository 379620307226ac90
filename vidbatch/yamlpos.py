"""YAML loading that remembers where every key and value came from.

``load(text, file)`` returns plain Python data plus a ``Positions`` table mapping
a path (``("videos", 2, "format")``) to the 1-based line and column of that value
(and of its key), so that schema errors can say ``manifest.yaml:12:5: ...``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from vidbatch.errors import ManifestError

Path = tuple[Any, ...]


@dataclass
class Positions:
    file: str
    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def locate(self, path: Path, *, key: bool = False) -> tuple[int, int]:
        """The position of ``path`` or of its nearest located ancestor."""
        path = tuple(path)
        while True:
            table = self.keys if key and path in self.keys else self.values
            if path in table:
                return table[path]
            if not path:
                return (1, 1)
            path = path[:-1]
            key = False

    def error(self, path: Path, message: str, *, key: bool = False) -> ManifestError:
        line, col = self.locate(path, key=key)
        where = format_path(path)
        return ManifestError(f"{where}: {message}" if where else message, file=self.file, line=line, col=col)


def format_path(path: Path) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _pos(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Loader(yaml.SafeLoader):
    pass


def _build(node: yaml.Node, path: Path, pos: Positions, loader: _Loader) -> Any:
    pos.values[path] = _pos(node)
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        loader.flatten_mapping(node)
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) or key is None:
                line, col = _pos(key_node)
                raise ManifestError("mapping keys must be plain strings", file=pos.file, line=line, col=col)
            key = str(key) if not isinstance(key, str) else key
            if key in out:
                line, col = _pos(key_node)
                raise ManifestError(
                    f"{format_path(path + (key,))}: duplicate key {key!r}; keep one of them",
                    file=pos.file,
                    line=line,
                    col=col,
                )
            pos.keys[path + (key,)] = _pos(key_node)
            out[key] = _build(value_node, path + (key,), pos, loader)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(child, path + (i,), pos, loader) for i, child in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def load(text: str, file: str) -> tuple[Any, Positions]:
    pos = Positions(file=file)
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, pos
        return _build(node, (), pos, loader), pos
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or "invalid YAML"
        hint = ""
        lines = text.splitlines()
        src_line = lines[line - 1] if 0 < line <= len(lines) else ""
        if "tab" in problem.lower() or "\t" in src_line:
            hint = "; indent with spaces, not tabs"
        elif "mapping values are not allowed" in problem:
            hint = "; a value containing ': ' needs quotes, or the indentation is off"
        elif "could not find expected ':'" in problem or "expected <block end>" in problem:
            hint = "; check the indentation and that every key ends with ':'"
        raise ManifestError(f"YAML syntax error: {problem}{hint}", file=file, line=line, col=col) from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"YAML error: {exc}", file=file, line=1, col=1) from None
    finally:
        loader.dispose()
