"""One registry class for environments, policies and trainers (three instances)."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["Registry", "RegistryError"]

T = TypeVar("T")


class RegistryError(KeyError):
    """Unknown or duplicate registered name."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Maps names to factories (classes or callables).

    A factory may also be given lazily as a ``"package.module:attribute"`` string, so
    built-ins register themselves without importing torch or gymnasium until they are
    first made. An unregistered name of that form is imported on use, so a config the user
    runs may name a user class directly (``type_: mypackage.envs:MyEnv``). A name read from a
    file someone else may have written (the config stored in a checkpoint) is looked up with
    ``get(name, allow_import=False)``, which resolves only what this process registered.

    Args:
        kind: what is registered ("environment", "policy", "trainer"), used in messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable[..., T] | str] = {}

    def register(self, name: str, factory: Callable[..., T] | str) -> None:
        """Register ``factory`` under ``name``.

        Raises:
            RegistryError: ``name`` is already registered (re-registering the very same
                factory is allowed, so a module imported twice does not fail).
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
        old = self._entries.get(name)
        if old is not None and old is not factory and old != factory:
            raise RegistryError(f"{self.kind} {name!r} is already registered (to {self._describe(old)})")
        self._entries[name] = factory

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str, *, allow_import: bool = True) -> Callable[..., T]:
        """The factory for ``name``; resolves lazy entries.

        Args:
            name: a registered name, or (with ``allow_import``) an unregistered ``"package.module:attribute"``.
            allow_import: import an unregistered ``"package.module:attribute"`` name. With ``False`` only
                names this process registered resolve (built-ins included: their lazy targets were
                registered by hpcrl itself). A ``"module:attribute"`` name then also resolves when it is
                exactly the target of a registered entry (its lazy string, or the ``__module__:__qualname__``
                of a registered class or function), without importing anything new.

        Raises:
            RegistryError: unknown name (or, with ``allow_import=False``, a name not registered in this
                process); the message lists close matches and all known names.
        """
        if name not in self._entries and isinstance(name, str) and ":" in name:
            if allow_import:
                # an unregistered "package.module:attribute" is imported on use
                self._entries[name] = name
            else:
                alias = self._registered_target(name)
                if alias is not None:
                    self._entries[name] = self._entries[alias]
        try:
            entry = self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(str(name), self.names(), n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            what = f"unknown {self.kind}" if allow_import else f"{self.kind} not registered in this process:"
            raise RegistryError(
                f"{what} {name!r}.{hint} Registered {self.kind}s: {', '.join(self.names()) or '(none)'}"
            ) from None
        if isinstance(entry, str):
            module, _, attr = entry.partition(":")
            try:
                factory = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as e:
                del self._entries[name]
                raise RegistryError(f"{self.kind} {name!r}: cannot load {entry!r}: {e}") from e
            self._entries[name] = factory
            return factory  # type: ignore[no-any-return]
        return entry

    def _registered_target(self, target: str) -> str | None:
        """A registered name whose entry is ``target`` (a lazy string or a class/function named so), else None."""
        for name, entry in self._entries.items():
            if isinstance(entry, str):
                if entry == target:
                    return name
            elif f"{getattr(entry, '__module__', '')}:{getattr(entry, '__qualname__', '')}" == target:
                return name
        return None

    def make(self, name: str, *args: Any, **kwargs: Any) -> T:
        """Build the ``name`` entry with ``args``/``kwargs``.

        Raises:
            TypeError: the arguments do not fit the factory (message names the entry).
        """
        factory = self.get(name)
        try:
            return factory(*args, **kwargs)
        except TypeError as e:
            if "argument" in str(e):
                raise TypeError(f"{self.kind} {name!r}: {e}") from e
            raise

    @staticmethod
    def _describe(entry: Any) -> str:
        if isinstance(entry, str):
            return entry
        return f"{getattr(entry, '__module__', '?')}.{getattr(entry, '__qualname__', repr(entry))}"
