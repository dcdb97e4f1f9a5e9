"""The README's "Bounding your own network" examples run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _section_code(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {title}")
    end = text.index("\n## ", start + 1)
    blocks = re.findall(r"```python\n(.*?)```", text[start:end], flags=re.S)
    return "\n".join(blocks)


@pytest.mark.slow
def test_bounding_your_own_network_examples_run(tmp_path):
    code = _section_code("Bounding your own network")
    # The checkify example must report the negative radius.
    code += "\ntry:\n    err.throw()\nexcept Exception as e:\n    print('CHECKIFY:', e)\n"
    script = tmp_path / "readme_examples.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "CHECKIFY:" in proc.stdout and "a radius is negative" in proc.stdout
