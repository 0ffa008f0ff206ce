"""Working-dir packages: excludes in .gitignore syntax, and the same files make the same name."""

from __future__ import annotations

import zipfile

import pytest

from cluster.packaging import Excludes, build_package, extract_package


def test_excludes_follow_gitignore_rules() -> None:
    rules = Excludes(["*.log", "/build/", "data/**/*.csv", "!keep.log", "# a comment", "tmp?"])
    assert rules.excluded("run.log", False) and rules.excluded("deep/dir/run.log", False)
    assert not rules.excluded("keep.log", False)  # the last matching pattern wins
    assert rules.excluded("build", True) and not rules.excluded("src/build", True)  # anchored
    assert not rules.excluded("build", False)  # a trailing / matches directories only
    assert rules.excluded("data/a/b/x.csv", False) and rules.excluded("data/x.csv", False)
    assert not rules.excluded("other/x.csv", False)
    assert rules.excluded("tmp1", False) and not rules.excluded("tmp12", False)


def test_the_same_files_make_the_same_package_and_it_unpacks_with_their_modes(tmp_path) -> None:
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "mod.py").write_text("X = 1\n")
    (src / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (src / "run.sh").chmod(0o755)
    (src / "notes.log").write_text("left out\n")
    (src / ".git").mkdir()
    (src / ".git" / "HEAD").write_text("ref\n")
    first, first_zip, _ = build_package(src, ["*.log"])
    (src / "pkg" / "mod.py").touch()  # a new mtime, same content: same package
    second, second_zip, _ = build_package(src, ["*.log"])
    second_zip.unlink()
    assert first == second and first.startswith("pkg_")
    assert sorted(zipfile.ZipFile(first_zip).namelist()) == ["pkg/mod.py", "run.sh"]
    out = tmp_path / "out"
    extract_package(first_zip, out)
    first_zip.unlink()
    assert (out / "pkg" / "mod.py").read_text() == "X = 1\n"
    assert (out / "run.sh").stat().st_mode & 0o777 == 0o755
    (src / "pkg" / "mod.py").write_text("X = 2\n")
    third, third_zip, _ = build_package(src, ["*.log"])
    third_zip.unlink()
    assert third != first  # new content: a new name


def test_a_directory_over_the_limit_is_refused_naming_the_fix(tmp_path) -> None:
    (tmp_path / "blob").write_bytes(b"x" * 2048)
    with pytest.raises(ValueError, match=r"limit.*excludes"):
        build_package(tmp_path, max_bytes=1024)
    with pytest.raises(ValueError, match="not a directory"):
        build_package(tmp_path / "missing")
