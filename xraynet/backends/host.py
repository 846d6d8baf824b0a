"""The host machine as the CPU backend sees it: its processor's name, and the
C allocator's handling of freed memory."""
from __future__ import annotations

import platform


def cpu_model_name() -> str:
    """The processor's model name (/proc/cpuinfo), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def keep_freed_memory() -> None:
    """Ask glibc to keep freed memory for reuse instead of returning it to the OS.

    Every training step allocates and frees the same large temporaries (im2col
    matrices, gradient maps: hundreds of MB for `wide`). By default glibc serves
    each from a fresh mmap and unmaps it on free, so every step pays page
    faults and kernel zeroing on first touch: about a third of a `seed`
    training step (347 vs 503 images/s). With mmap off and trimming raised,
    the heap keeps those pages and the next step reuses them. No effect
    outside glibc.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_mmap_max = -1, -4
    mallopt(m_mmap_max, 0)
    mallopt(m_trim_threshold, 2**30)
