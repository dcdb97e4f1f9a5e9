"""The README's Python code blocks run as written, in order, and its module paths exist."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)


@pytest.mark.slow
def test_every_python_block_runs_in_order(tmp_path):
    code = "\n".join(_python_blocks())
    # The checkify example must report the negative radius.
    code += "\ntry:\n    err.throw()\nexcept Exception as e:\n    print('CHECKIFY:', e)\n"
    script = tmp_path / "readme_examples.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CHECKIFY:" in proc.stdout and "a radius is negative" in proc.stdout


def test_module_paths_in_the_docs_exist():
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    paths = {p for t in texts for p in re.findall(r"`((?:lr_jax|scripts|tests)/[\w/]+\.py)", t.read_text())}
    assert paths and sorted(p for p in paths if not (ROOT / p).is_file()) == []
