"""tools.linux's choices that need no download: which kernel, where its assets live, the
host's Debian release."""
from __future__ import annotations

from pathlib import Path

import pytest

from tools.linux import assets
from tools.linux.__main__ import main


def test_each_kernel_has_its_own_cache_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path))
    assert assets.cache_dir() == assets.cache_dir("stable") == tmp_path
    assert assets.cache_dir("backports") == tmp_path / "backports"
    with pytest.raises(ValueError, match="one of stable, backports"):
        assets.cache_dir("testing")
    with pytest.raises(ValueError):
        assets.fetch(tmp_path, "testing")


def test_an_unknown_kernel_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["fetch", "--kernel", "testing"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_the_backports_suite_is_named_after_the_host_release(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    os_release = tmp_path / "os-release"
    monkeypatch.setattr(assets, "OS_RELEASE", os_release)
    os_release.write_text('PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nVERSION_CODENAME=bookworm\nID=debian\n')
    assert assets.codename() == "bookworm"
    os_release.write_text("ID=debian\n")
    with pytest.raises(assets.AssetError, match="no VERSION_CODENAME"):
        assets.codename()
    os_release.write_text("VERSION_CODENAME=x y\n")  # not a suite name: refused, never put in a sources line
    with pytest.raises(assets.AssetError):
        assets.codename()
    os_release.unlink()
    with pytest.raises(assets.AssetError, match="os-release"):
        assets.codename()
