"""Safe YAML input: plain data only, with the size a document expands to through aliases bounded.

Config files, ``key=value`` overrides and the configs stored in checkpoints are all read with
:func:`parse_yaml`; every problem is a :class:`~hpcrl.api.errors.ConfigError` that names the source.

Examples:
    >>> parse_yaml("actor: {envs_per_actor: 4}", "example")
    {'actor': {'envs_per_actor': 4}}
"""

from __future__ import annotations

from typing import Any

from hpcrl.api.errors import ConfigError

__all__ = ["MAX_YAML_VALUES", "parse_yaml"]

#: A YAML document may expand (through aliases) to at most this many values (scalars, lists, mappings).
MAX_YAML_VALUES = 100_000


def _yaml_loader(source: str) -> Any:
    """A ``yaml.SafeLoader`` subclass that bounds the size a document expands to through aliases."""
    import yaml

    class BoundedLoader(yaml.SafeLoader):
        """Counts, while composing, how many values each node stands for once aliases are expanded.

        A "billion laughs" document (anchors whose aliases nest ten times per level) is small as text and
        as loaded Python objects (aliases share objects), but every consumer that walks it (the config dump,
        a merge key ``<<``) expands it. The count is the expanded size of every node, memoised, so it costs
        one pass over the text; an alias to a node still being composed (a recursive document) is refused.
        """

        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            self._sizes: dict[int, int] = {}

        def compose_node(self, parent: Any, index: Any) -> Any:
            alias = self.peek_event() if self.check_event(yaml.AliasEvent) else None
            node: Any = super().compose_node(parent, index)
            if alias is not None:
                if id(node) not in self._sizes:
                    raise ConfigError(
                        f"{source}: line {alias.start_mark.line + 1}: alias *{alias.anchor} refers to a value that "
                        f"contains it (a recursive document)"
                    )
                return node
            if isinstance(node, yaml.MappingNode):
                size = 1 + sum(self._sizes[id(k)] + self._sizes[id(v)] for k, v in node.value)
            elif isinstance(node, yaml.SequenceNode):
                size = 1 + sum(self._sizes[id(v)] for v in node.value)
            else:
                size = 1
            if size > MAX_YAML_VALUES:
                raise ConfigError(
                    f"{source}: line {node.start_mark.line + 1}: the document expands through aliases to more "
                    f"than {MAX_YAML_VALUES:,} values (a 'billion laughs' document?); refused"
                )
            self._sizes[id(node)] = size
            return node

    return BoundedLoader


def _yaml_problem(e: Any) -> str:
    """PyYAML's error as one line: ``found unexpected end of stream at line 2, column 1 (while scanning ...)``."""
    problem, mark = getattr(e, "problem", None), getattr(e, "problem_mark", None)
    if not problem:
        return " ".join(str(e).split())
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    context = getattr(e, "context", None)
    return f"{problem}{where}" + (f" ({context})" if context else "")


def parse_yaml(text: str | bytes, source: str) -> Any:
    """Parse one YAML document safely (``yaml.SafeLoader``: plain data only), bounding what aliases expand to.

    Used for config files, ``key=value`` overrides and configs stored in checkpoints.

    Args:
        text: the document; bytes must be UTF-8.
        source: what the text is (a file name, ``override 'a=b'``), for messages.

    Returns:
        The plain data (``None`` for an empty document).

    Raises:
        ConfigError: not UTF-8 (names the byte position and line), not valid YAML, nested too deeply, or
            expanding through aliases to more than :data:`MAX_YAML_VALUES` values (names the line).
    """
    import yaml

    if isinstance(text, bytes):
        raw = text
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw.count(b"\n", 0, e.start) + 1
            raise ConfigError(
                f"{source}: not UTF-8 text: byte 0x{raw[e.start]:02x} at position {e.start} (line {line}) "
                f"cannot be decoded ({e.reason}); save the file as UTF-8"
            ) from None
    loader = None
    try:
        loader = _yaml_loader(source)(text)  # the reader refuses control characters here already
        return loader.get_single_data()
    except ConfigError:
        raise
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {_yaml_problem(e)}") from None
    except (ValueError, TypeError, OverflowError) as e:  # a scalar of a YAML type that cannot be built: 2001-02-30
        raise ConfigError(f"{source}: not valid YAML: {type(e).__name__}: {e}") from None
    except RecursionError:
        raise ConfigError(f"{source}: not valid YAML: nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()
