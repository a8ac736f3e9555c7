"""Check user components before deploying them: ``test_environment`` and ``test_pipeline``.

Both functions start with ``test_`` for discoverability in user code; they carry
``__test__ = False`` so pytest does not collect them when imported into a test module.
"""

from __future__ import annotations

from hpcrl.testing.environment import test_environment
from hpcrl.testing.pipeline import PipelineError, test_pipeline

__all__ = ["PipelineError", "test_environment", "test_pipeline"]
