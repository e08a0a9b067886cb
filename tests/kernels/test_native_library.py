"""Building and loading the C++ CPU kernels: the real build here, and the failures that must leave the
torch path serving (a missing or failing compiler) with the reason in the error."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernels import native_library
from tests.kernels.conftest import needs_compiler


@needs_compiler
def test_library_builds_and_loads() -> None:
    assert native_library.load(), "see the warning logged by kernels.native_library"
    assert native_library.library_path().exists()


def test_a_failing_compiler_is_a_build_error_with_its_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compiler = tmp_path / "broken-c++"
    compiler.write_text("#!/bin/sh\necho 'no such header' >&2\nexit 3\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("CXX", str(compiler))
    monkeypatch.setattr(native_library, "BUILD_DIR", tmp_path / "build")
    with pytest.raises(native_library.NativeBuildError, match=r"failed \(3\):\nno such header"):
        native_library.build()
    assert list((tmp_path / "build").iterdir()) == [], "a failed build must not leave a library behind"


def test_a_missing_compiler_is_a_build_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", str(tmp_path / "nowhere" / "c++"))
    monkeypatch.setattr(native_library, "BUILD_DIR", tmp_path / "build")
    with pytest.raises(native_library.NativeBuildError, match="cannot run"):
        native_library.build()


def test_the_library_name_follows_the_sources_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    before = native_library.library_path()
    monkeypatch.setattr(native_library, "FLAGS", [*native_library.FLAGS, "-DSOMETHING_ELSE"])
    assert native_library.library_path() != before


def test_a_new_build_removes_the_builds_of_older_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compiler = tmp_path / "fake-c++"  # "compiles" by writing the file named after -o
    compiler.write_text('#!/bin/sh\nwhile [ "$1" != "-o" ]; do shift; done\necho built > "$2"\n')
    compiler.chmod(0o755)
    monkeypatch.setenv("CXX", str(compiler))
    build_dir = tmp_path / "build"
    build_dir.mkdir()
    (build_dir / "tritonllm_cpu-0123456789abcdef.so").write_text("older sources")
    (build_dir / "unrelated.txt").write_text("kept")
    monkeypatch.setattr(native_library, "BUILD_DIR", build_dir)
    built = native_library.build()
    assert sorted(path.name for path in build_dir.iterdir()) == sorted([built.name, "unrelated.txt"])
    assert built.read_text() == "built\n"
