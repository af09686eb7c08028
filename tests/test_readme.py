"""The README's Python examples run, and its optimizer table lists the whole registry."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from optimkit.registry import REGISTRY

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_python_blocks_run(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})


def test_readme_lists_every_registered_optimizer():
    for spec in REGISTRY.values():
        assert f"| `{spec.cls.__name__}` |" in README, spec.cls.__name__


def test_readme_starts_with_the_two_commands():
    first_block = README.split("```bash\n", 1)[1].split("```", 1)[0]
    assert first_block.splitlines()[0].startswith("make lab")
    assert first_block.splitlines()[1].startswith("make test")
