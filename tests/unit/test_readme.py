"""The README's Python snippets run as written (docs that drift are bugs)."""

from __future__ import annotations

import re

from conftest import REPO

from hpcrl.api.environment import ALL_ENVIRONMENTS


def test_readme_python_blocks_run():
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 3
    namespace: dict[str, object] = {"__name__": "readme"}
    try:
        for block in blocks:
            exec(compile(block, "README.md", "exec"), namespace)
    finally:
        ALL_ENVIRONMENTS._entries.pop("corridor", None)  # the README registers it
    assert namespace["policy"] is not None
