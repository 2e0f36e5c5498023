"""tuner.config.cluster_token: a cluster's own token, mode 0600, never the account's ~/.ray/auth_token."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tuner.config.cluster_token import TokenError, write_token

REPO = Path(__file__).resolve().parents[3]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_token_is_private_whatever_the_umask(tmp_path: Path):
    old = os.umask(0)  # the most permissive umask: the file must still be 0600, its new folder 0700
    try:
        path = write_token(tmp_path / "new" / "lab.token")
    finally:
        os.umask(old)
    assert mode(path) == 0o600 and mode(path.parent) == 0o700
    assert re.fullmatch(r"[0-9a-f]{64}", path.read_text())  # Ray's format, no newline
    assert [p.name for p in path.parent.iterdir()] == ["lab.token"]  # no temporary file left


def test_an_existing_token_is_kept_unless_forced(tmp_path: Path):
    path = write_token(tmp_path / "lab.token")
    first = path.read_text()
    with pytest.raises(TokenError, match="--force"):
        write_token(path)
    assert path.read_text() == first
    path.chmod(0o644)
    write_token(path, force=True)  # a rotation: a new token, private again
    assert path.read_text() != first and mode(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lab.token"]


def test_the_accounts_shared_token_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    shared = tmp_path / ".ray" / "auth_token"
    shared.parent.mkdir()
    shared.write_text("local studies' token")
    for given in ("~/.ray/auth_token", str(shared)):
        with pytest.raises(TokenError, match="shared Ray token"):
            write_token(given, force=True)
    assert shared.read_text() == "local studies' token"
    with pytest.raises(TokenError, match="folder"):
        write_token(tmp_path)


def test_command_line(tmp_path: Path):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tuner.config.cluster_token", *args], cwd=REPO, capture_output=True,
                              text=True, env={**os.environ, "HOME": str(tmp_path)}, timeout=60)

    made = run("~/.gentune/gentune-lab.token")
    path = tmp_path / ".gentune" / "gentune-lab.token"
    assert made.returncode == 0 and mode(path) == 0o600, made.stderr
    token = path.read_text()
    assert token not in made.stdout + made.stderr  # never printed
    again = run("~/.gentune/gentune-lab.token")
    assert again.returncode == 1 and again.stderr.startswith("error:") and "--force" in again.stderr
    assert path.read_text() == token
    assert run("--force", "~/.gentune/gentune-lab.token").returncode == 0 and path.read_text() != token
