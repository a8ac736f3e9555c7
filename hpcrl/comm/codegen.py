"""Code generated from a schema: the channels' structure check (matcher) and NamedArray builders.

Both are straight-line Python made once per schema (:class:`~hpcrl.comm.schema.Schema` caches them), so
checking or rebuilding a NamedArray of a few leaves costs a microsecond or less. Field names enter the
generated code only as ``repr`` literals; classes, key lists and dtypes are bound in its namespace, never
spelled in it.

Node classes are found by name (``module:qualname``, as a schema records them) with
:func:`resolve_class`: only NamedArray classes the process has already defined count, and the only
modules ever imported for it are hpcrl's own.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from hpcrl.api.namedarray import NamedArray
from hpcrl.comm.wire import SchemaError

if TYPE_CHECKING:
    from hpcrl.comm.schema import Schema

__all__ = ["resolve_class", "class_name", "make_matcher", "make_builder", "Matcher", "Builder"]

#: ``na -> (batch shape, leaves in schema order)``, or ``None`` when ``na`` is not proven to fit.
Matcher = Callable[[Any], "tuple[tuple[int, ...], list[np.ndarray]] | None"]
#: ``leaves in schema order -> NamedArray``.
Builder = Callable[[list[Any]], NamedArray]


def class_name(cls: type) -> str:
    """The name a schema records for a node class: ``module:qualname``."""
    return f"{cls.__module__}:{cls.__qualname__}"


def _is_named(obj: Any, module: str, qualname: str) -> bool:
    return (
        isinstance(obj, type)
        and issubclass(obj, NamedArray)
        and obj.__module__ == module
        and obj.__qualname__ == qualname
    )


def _in_module(module: str, qualname: str) -> type[NamedArray] | None:
    """The class bound to ``qualname`` in an already imported ``module`` (plain dict lookups, no code runs)."""
    obj: Any = sys.modules.get(module)
    for part in qualname.split("."):
        if obj is None or part == "<locals>":
            return None
        try:
            obj = vars(obj).get(part)
        except TypeError:  # no __dict__
            return None
    return obj if _is_named(obj, module, qualname) else None


def _defined(module: str, qualname: str) -> type[NamedArray] | None:
    """The newest NamedArray subclass of that name among those alive (classes defined in functions)."""
    found = None
    todo = list(NamedArray.__subclasses__())
    seen: set[int] = set()
    while todo:
        cls = todo.pop(0)
        if id(cls) in seen:
            continue
        seen.add(id(cls))
        if _is_named(cls, module, qualname):
            found = cls
        todo.extend(cls.__subclasses__())
    return found


def resolve_class(name: str) -> type[NamedArray]:
    """The NamedArray class a schema names (``module:qualname``), or ``NamedArray`` if there is none.

    Looked up where the module binds it (so a redefined class resolves to its newest definition), else
    among the NamedArray subclasses alive in this process (classes defined inside functions). A module
    is imported for it only if it is an hpcrl module; nothing named by the sender is ever called.
    """
    module, _, qualname = name.partition(":")
    if module not in sys.modules and module.startswith("hpcrl."):
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    return _in_module(module, qualname) or _defined(module, qualname) or NamedArray


def _tables(schema: Schema) -> tuple[dict[str, tuple[str, list[str]]], dict[str, int]]:
    table = {p: (c, list(f)) for p, c, f in schema.nodes}
    if "" not in table:
        raise SchemaError("schema has no root node")
    return table, {leaf.path: i for i, leaf in enumerate(schema.leaves)}


def _node_class(cname: str, fields: list[str]) -> type[NamedArray]:
    """The class to rebuild a node with: its own, unless it cannot hold the node's fields."""
    cls = resolve_class(cname)
    if cls is not NamedArray and not cls._extra and any(f not in cls._fields for f in fields):
        return NamedArray
    return cls


def make_builder(schema: Schema, fresh_views: bool = False) -> Builder:
    """A function rebuilding the nested NamedArray from the leaves in schema order.

    Args:
        schema: the schema.
        fresh_views: give each leaf as a fresh view (``a.view()``), so flags or shapes a caller sets on
            one rebuilt NamedArray never reach the next one built from the same leaves (a channel's
            receive path).

    The generated code fills each node's ``__dict__`` as ``NamedArray._build`` does; a node class that
    overrides ``__new__`` gets it called.
    """
    table, index = _tables(schema)
    suffix = ".view()" if fresh_views else ""
    env: dict[str, Any] = {}
    lines: list[str] = []

    def node(prefix: str) -> str:
        cname, fields = table[prefix]
        cls = _node_class(cname, fields)
        values = []
        for f in fields:
            path = f"{prefix}.{f}" if prefix else f
            if path in table:
                values.append(node(path))
            elif path in index:
                values.append(f"L[{index[path]}]{suffix}")
            else:
                values.append("None")
        k = len(env) // 2
        env[f"C{k}"], env[f"N{k}"] = cls, cls.__new__
        lines.append(f"    o{k} = N{k}(C{k})")
        lines.append(f"    d{k} = o{k}.__dict__")
        lines.append(f"    d{k}['_keys'] = {list(fields)!r}")
        lines.extend(f"    d{k}[{f!r}] = {v}" for f, v in zip(fields, values))
        return f"o{k}"

    root = node("")
    exec("\n".join(["def build(L):", *lines, f"    return {root}"]), env)  # field names only as repr literals
    return env["build"]  # type: ignore[no-any-return]


def make_matcher(schema: Schema) -> Matcher:
    """A function ``na -> (batch shape, leaves in schema order)`` or ``None`` (the channels' structure check).

    It returns a result only when ``na`` has exactly the schema's structure with plain numpy leaves: the
    same node classes and field lists, ``None`` where the schema has no leaf, and every leaf an
    ``np.ndarray`` of the schema's dtype and per-row shape whose batch dims equal the first leaf's.
    ``None`` means "not proven equal": the caller then describes ``na`` afresh (``Schema.of``), which
    also produces the error messages.
    """
    table, index = _tables(schema)
    if not schema.leaves:  # no leaf gives the batch shape: never proven
        return lambda na: None
    env: dict[str, Any] = {"ndarray": np.ndarray, "BND": schema.batch_ndim}
    lines: list[str] = []
    counter = [0]

    def node(prefix: str, var: str) -> None:
        cname, fields = table[prefix]
        k = counter[0]
        env[f"C{k}"], env[f"K{k}"] = resolve_class(cname), fields
        lines.append(f"if type({var}) is not C{k} or {var}._keys != K{k}: return None")
        lines.append(f"d{k} = {var}.__dict__")
        for f in fields:
            counter[0] += 1
            path = f"{prefix}.{f}" if prefix else f
            if path in table:
                child = f"n{counter[0]}"
                lines.append(f"{child} = d{k}[{f!r}]")
                node(path, child)
            elif path in index:
                i = index[path]
                env[f"D{i}"] = np.dtype(schema.leaves[i].dtype)
                env[f"S{i}"] = schema.leaves[i].shape
                lines.append(f"a{i} = d{k}[{f!r}]")
                lines.append(f"if type(a{i}) is not ndarray or a{i}.dtype != D{i}: return None")
                if i == 0:
                    lines.append("b = a0.shape[:BND]")
                    lines.append("if len(b) != BND: return None")
                lines.append(f"if a{i}.shape != b + S{i}: return None")
            else:
                lines.append(f"if d{k}[{f!r}] is not None: return None")

    node("", "n0")
    lines.append(f"return b, [{', '.join(f'a{i}' for i in range(len(schema.leaves)))}]")
    body = ["def match(n0):", "  try:", *("    " + line for line in lines)]
    body += ["  except (AttributeError, KeyError):", "    return None"]  # not a NamedArray, or a field deleted
    exec("\n".join(body), env)  # field names only as repr literals
    return env["match"]  # type: ignore[no-any-return]
