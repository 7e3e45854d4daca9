"""The code version in every model's lineage (``code_version``): the commit of the code that runs, whether
its tracked files were edited since, and nothing where that cannot be known.

Each test points ``ragloop.__file__`` at a package laid out as it would be on disk (a real git checkout, a
copy inside a virtual environment, an install pip made from a git URL) and asks the real git binary.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import ragloop
from ragloop.training.lineage import code_version

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def git(repo: Path, *args: str) -> str:
    identity = ["-c", "user.name=Test", "-c", "user.email=test@example.org"]
    done = subprocess.run(["git", *identity, *args], cwd=repo, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def package_at(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``ragloop`` package in ``folder``, made the running one for ``code_version``."""
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text('__version__ = "0.1.0"\n')
    monkeypatch.setattr(ragloop, "__file__", str(folder / "__init__.py"))
    return folder


def checkout(repo: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A git checkout with the package committed under ``src/`` and ``.venv/`` ignored; its HEAD."""
    package_at(repo / "src" / "ragloop", monkeypatch)
    (repo / ".gitignore").write_text(".venv/\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "first")
    return repo


def test_a_checkout_records_its_commit_and_whether_tracked_files_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = checkout(tmp_path / "checkout", monkeypatch)
    head = git(repo, "rev-parse", "HEAD")
    assert code_version() == {"ragloop": ragloop.__version__, "git_commit": head, "git_dirty": False}

    (repo / "notes.txt").write_text("an untracked note is not code")
    assert code_version()["git_dirty"] is False
    (repo / "src" / "ragloop" / "__init__.py").write_text('__version__ = "0.1.1"\n')
    assert code_version() == {"ragloop": ragloop.__version__, "git_commit": head, "git_dirty": True}


def test_a_copy_inside_a_repository_is_not_that_repository_s_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = checkout(tmp_path / "project", monkeypatch)
    package_at(repo / ".venv" / "lib" / "site-packages" / "ragloop", monkeypatch)  # ignored by git
    version = code_version()
    assert version["git_commit"] is None and version["git_dirty"] is None


def test_an_install_from_a_git_url_records_the_commit_pip_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site-packages"  # outside any checkout: git has nothing to say
    package_at(site / "ragloop", monkeypatch)
    dist_info = site / "ragloop-0.1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: ragloop\nVersion: 0.1.0\n")
    direct_url = {"url": "https://example.org/ragloop.git", "vcs_info": {"vcs": "git", "commit_id": COMMIT}}
    (dist_info / "direct_url.json").write_text(json.dumps(direct_url))  # as pip writes it (PEP 610)
    monkeypatch.syspath_prepend(str(site))

    version = code_version()
    assert version["git_commit"] == COMMIT and version["git_dirty"] is False

    (dist_info / "direct_url.json").unlink()  # an install from an index records no origin
    version = code_version()
    assert version["git_commit"] is None and version["git_dirty"] is None
