"""What a newcomer reads first (issue 15): the README sets up a virtual environment before the
install line CI greps, never tells anyone to install an unpublished package, and its dirty-map
example draws something."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_creates_and_activates_a_venv_before_the_install_line() -> None:
    install = README.index("\npip install -e '.[dev]'\n")
    venv = README.find("python3 -m venv .venv")
    activate = README.find("source .venv/bin/activate")
    assert 0 <= venv < activate < install
    assert re.search(r"^pytest$", README, re.M)  # the line .ci/run greps


def test_no_instruction_installs_the_unpublished_package() -> None:
    """`pip install microvm-harness` (with or without extras) cannot resolve: nothing may say it."""
    unpublished = re.compile(r"pip install ['\"]?microvm-harness")
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "vmm").rglob("*.py")), *sorted((ROOT / "snapshot").glob("*.py")), *sorted((ROOT / "guests").glob("*.py"))]
    offenders = [str(p.relative_to(ROOT)) for p in texts if unpublished.search(p.read_text())]
    assert offenders == []


@pytest.mark.slow
def test_the_readme_dirty_map_example_shows_a_moving_window(tmp_path: Path, capsys) -> None:
    pytest.importorskip("matplotlib")
    from vmm.cli import main
    import json

    line = re.search(r"^microvm (dirty-map .*?)# ", README.replace("\\\n", ""), re.M)
    assert line, "README lost its dirty-map example"
    argv = shlex.split(line.group(1))
    argv[argv.index("-o") + 1] = str(tmp_path / "map.png")
    assert main([*argv, "--json", "-q"]) == 0
    summary = json.loads(capsys.readouterr().out)
    pages = summary["dirty_pages"]
    assert summary["stop"] == "budget" and len(pages) == summary["epochs"] == 40  # no power-off after 3 epochs
    assert all(p > 0 for p in pages)
