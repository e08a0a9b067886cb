"""engine.host_memory: glibc takes the malloc thresholds the CPU engine sets (checked in a subprocess: the
setting lasts for the whole process, and the tests that follow should run with glibc's defaults), and the
KV cache's memory is backed by huge pages where the kernel offers them."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.host_memory import zeros_on_huge_pages


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_accepts_the_thresholds() -> None:
    probe = "from engine.host_memory import keep_freed_memory; print(keep_freed_memory())"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True"]


def huge_pages_allowed() -> bool:
    """Transparent huge pages on for regions that ask (Linux's "always" or "madvise" mode)."""
    setting = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return setting.exists() and ("[always]" in setting.read_text() or "[madvise]" in setting.read_text())


def huge_page_kilobytes(address: int) -> int:
    """AnonHugePages of the mapping of this process that holds `address` (/proc/self/smaps)."""
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            start, end = (int(bound, 16) for bound in head.split("-"))
            inside = start <= address < end
        elif inside and head == "AnonHugePages:":
            return int(line.split()[1])
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(not huge_pages_allowed(), reason="transparent huge pages are off here")
def test_the_kv_cache_asks_for_huge_pages() -> None:
    """The CPU KV cache's allocation (engine.host_memory.zeros_on_huge_pages) is backed by 2 MB pages, and zeroed."""
    cache = zeros_on_huge_pages((2, 64 << 20), torch.bfloat16)
    # The advice splits the mapping at the first and last whole huge page: look inside them.
    middle = cache.data_ptr() + cache.numel() * cache.element_size() // 2
    assert huge_page_kilobytes(middle) > 0
    assert not cache.any()
