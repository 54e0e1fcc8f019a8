"""README.md's Python API section runs as written, in a fresh directory."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks(section: str) -> list[str]:
    """The ```python blocks of README's `## <section>`, in order."""
    text = README.read_text()
    match = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## )", text, re.M | re.S)
    assert match, f"README.md has no '## {section}' section"
    return re.findall(r"^```python\n(.*?)^```", match.group(1), re.M | re.S)


def test_the_api_section_shows_the_snapshot_methods() -> None:
    code = "\n".join(python_blocks("Python API"))
    assert "vm.save_snapshot(" in code and "MicroVM.load_snapshot(" in code and "vm.reset_to(" in code
    assert "snapshot.persist" not in code


@pytest.mark.slow
def test_the_python_api_snippets_run_verbatim(tmp_path: Path) -> None:
    """Each block runs after the ones before it, as a reader would paste them into one session."""
    script = "\n".join(python_blocks("Python API")) + "\nprint('README-OK')\n"
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.rstrip().endswith("README-OK")
    assert (tmp_path / "base.snap").is_file() and (tmp_path / "next.snap").is_file()
