"""The package version, in one place: ``hpcrl.__version__``, ``setup.py`` and the files hpcrl writes read it here."""

from __future__ import annotations

__version__ = "0.1.0"
