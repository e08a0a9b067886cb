"""glibc's malloc told to keep the memory the CPU engine frees, instead of handing it back to the kernel.

Why: every layer of a prefill step allocates and frees tensors of several MB (a 2,048-token chunk of
SmolLM2's gate|up output is 25 MB). By default glibc serves blocks that large with mmap, or trims the heap
top once more than 128 KB is free, so each one comes back as fresh pages that fault in one by one: a
residual add + RMSNorm over 2,048 x 576 floats took 250-6,000 us instead of 390 us on this 2-core VM, and
a 2,048-token prefill step 2.85-3.02 s instead of 2.49-2.50 s (2.46-2.65 s on an engine thread of its
own, as in the `llm` model, whose allocations come from another glibc arena). vLLM's CPU backend asks for
tcmalloc through LD_PRELOAD for the same reason; raising the two thresholds gets the same reuse from the
allocator already loaded, set from inside the process that needs it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

logger = logging.getLogger(__name__)

# mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# glibc refuses mmap thresholds above half its largest heap (32 MiB on 64-bit); larger blocks are rare
# here (a step's tensors stay below it) and keep using mmap.
MMAP_THRESHOLD_BYTES = 32 << 20
# Free memory kept at the top of a heap before trimming: more than one prefill step's temporaries.
TRIM_THRESHOLD_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False where the C library is not glibc
    or refuses one of the settings."""
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    accepted = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
    if not accepted:
        logger.warning("glibc refused the malloc thresholds; freed tensors go back to the kernel")
    return accepted
