"""The type hints hold: mypy checks mountfs and cache with the project's configuration
(pyproject.toml), so an annotation that no longer says what the code does fails the suite."""
from __future__ import annotations

from pathlib import Path

from mypy import api

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_finds_no_type_errors(tmp_path: Path) -> None:
    out, err, status = api.run(["--config-file", str(ROOT / "pyproject.toml"),
                                "--cache-dir", str(tmp_path / "mypy-cache"),
                                str(ROOT / "mountfs"), str(ROOT / "cache")])
    assert status == 0, out + err
    assert "Success" in out
