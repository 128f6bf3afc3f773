"""YAML input that cannot hurt: UTF-8 only, bounded size and expansion, no duplicate keys, no tags.

Every file and ``--set`` value a user gives (training configs, space files) is read here. What is refused raises
:class:`YamlError` with the file, the position and the reason, never the input's (possibly enormous) value:

- more than :data:`MAX_BYTES` bytes, or bytes that are not UTF-8 text (a UTF-8 byte-order mark is fine);
- a document whose aliases expand it beyond :data:`MAX_NODES` nodes (an "alias bomb": a few hundred bytes that
  expand to hundreds of millions of nodes), counted on the composed node graph before anything is constructed;
- a mapping with the same key twice (YAML would keep the last one silently);
- YAML syntax errors, and tags in a ``--set`` value (``!!python/...``; safe_load refuses them anyway).

>>> load_text("a: 1\\nb: [1e-4, x]")
{'a': 1, 'b': ['1e-4', 'x']}
>>> load_text("a: 1\\na: 2", source="x.yaml")
Traceback (most recent call last):
...
moco.safe_yaml.YamlError: x.yaml: line 2, column 1: invalid YAML: duplicate key 'a' (first at line 1, column 1)
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 1 << 20  #: 1 MiB: far above any real config or space file
MAX_NODES = 100_000  #: nodes after alias expansion


class YamlError(ValueError):
    """A YAML input was refused; the message names the source, the position when known, and the reason."""

    def __init__(self, source: str, where: str | None, reason: str):
        super().__init__(f"{source}: {where + ': ' if where else ''}{reason}")
        self.source, self.where, self.reason = source, where, reason


def short(value: Any, limit: int = 80) -> str:
    """A bounded ``repr`` for error messages (nested containers and long strings are cut with ``...``)."""
    r = reprlib.Repr()
    r.maxstring = r.maxother = limit
    r.maxlist = r.maxdict = r.maxtuple = r.maxset = 6
    r.maxlevel = 3
    return r.repr(value)


def _position(mark) -> str | None:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else None


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(None, None, "a mapping key must be a plain value",
                                                        key_node.start_mark) from None
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {short(key)} (first at {_position(seen[key])})", key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node, cache: dict[int, int]) -> int:
    """Nodes in the document once every alias is expanded (shared nodes counted at each use), memoised by node."""
    done = cache.get(id(node))
    if done is not None:
        return done
    cache[id(node)] = MAX_NODES + 1  # a cycle (a recursive alias) counts as too large
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, cache) + _expanded_size(v, cache) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(v, cache) for v in node.value)
    else:
        size = 1
    cache[id(node)] = size = min(size, MAX_NODES + 1)
    return size


def load_text(text: str, source: str = "<input>") -> Any:
    """Parse one YAML document from ``text`` under the rules above."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_NODES:
            raise YamlError(source, _position(node.start_mark),
                            f"the document expands to more than {MAX_NODES:,} nodes through its aliases "
                            "(an alias bomb?); write the values out")
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise YamlError(source, _position(mark), f"invalid YAML: {problem}") from None
    except RecursionError:
        raise YamlError(source, None, "the document is nested too deeply") from None
    finally:
        loader.dispose()


def load_file(path: str | Path) -> Any:
    """Read and parse a YAML file: at most :data:`MAX_BYTES`, UTF-8 (an optional BOM is dropped)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise YamlError(str(path), None, f"{size:,} bytes: a YAML file of at most {MAX_BYTES:,} bytes")
        data = path.read_bytes()
    except OSError as err:
        raise YamlError(str(path), None, f"cannot be read ({err.strerror or err})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise YamlError(str(path), f"byte {err.start}", "not UTF-8 text (save the file as UTF-8)") from None
    if "\x00" in text:
        raise YamlError(str(path), None, "not a text file (it contains NUL bytes)")
    return load_text(text, str(path))


def load_value(raw: str, source: str) -> Any:
    """A ``--set key=value`` value as a YAML scalar (``1e-3``, ``true``, ``null``, ``[1, 2]``); tags are refused."""
    if raw.lstrip().startswith("!"):
        raise YamlError(source, None, "YAML tags are not allowed in a value")
    if len(raw) > 10_000:
        raise YamlError(source, None, "a value of at most 10,000 characters")
    return load_text(raw, source)
