"""glibc takes the malloc thresholds the CPU engine sets (engine.host_memory). Checked in a subprocess:
the setting lasts for the whole process, and the tests that follow should run with glibc's defaults."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_accepts_the_thresholds() -> None:
    probe = "from engine.host_memory import keep_freed_memory; print(keep_freed_memory())"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True"]
