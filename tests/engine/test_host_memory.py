"""glibc takes the malloc thresholds the CPU engine sets (engine.host_memory)."""

from __future__ import annotations

import platform

import pytest

from engine.host_memory import keep_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_accepts_the_thresholds() -> None:
    assert keep_freed_memory()
