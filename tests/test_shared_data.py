"""require_shared: tests needing ../shared skip without it, and fail under CI=true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .conftest import DEV_SPEECH, SHARED, require_shared

HERE = Path(__file__).resolve().parent


def test_missing_shared_path_skips_with_the_path_as_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "shared" / "data" / "dev-speech"
    for ci in (None, "false", "1"):  # only CI=true (what CI services set) turns the skip into a failure
        if ci is None:
            monkeypatch.delenv("CI", raising=False)
        else:
            monkeypatch.setenv("CI", ci)
        with pytest.raises(pytest.skip.Exception, match=re.escape(str(missing))):
            require_shared(missing)


def test_missing_shared_path_fails_under_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "shared" / "noise"
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=re.escape(str(missing)) + r".*CI=true"):
        require_shared(missing)


def test_present_shared_path_is_returned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "rir").mkdir()
    (tmp_path / "ASR_train.json").write_text("{}")
    for ci in ("true", None):
        if ci is None:
            monkeypatch.delenv("CI", raising=False)
        else:
            monkeypatch.setenv("CI", ci)
        assert require_shared(tmp_path / "rir") == tmp_path / "rir"
        assert require_shared(tmp_path / "ASR_train.json") == tmp_path / "ASR_train.json"


def test_no_test_checks_shared_data_on_its_own() -> None:
    """Every test reading SHARED / DEV_SPEECH goes through require_shared: no private
    is_dir()/exists() checks, skipif marks or skips of its own (which CI=true would not catch)."""
    own_check = re.compile(r"(DEV_SPEECH|SHARED)\b[^\n]*\.(is_dir|is_file|exists)\(\)|skipif\([^\n]*(DEV_SPEECH|SHARED)")
    offenders = [
        f"{p.name}:{i}: {line.strip()}"
        for p in sorted(HERE.glob("test_*.py"))
        if p.name != Path(__file__).name
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if own_check.search(line)
    ]
    assert not offenders, offenders
    assert DEV_SPEECH.is_relative_to(SHARED)
