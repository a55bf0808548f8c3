"""Puts a caching memory allocator under TensorFlow's CPU step before TensorFlow starts.

With glibc's malloc every large activation buffer of the training step is a fresh ``mmap``
that is returned to the kernel when freed, so each step faults its whole working set in
again: 1.9 million minor page faults and about twice the reference's time per step of
vanilla DeepEmoCluster (issue 20, docs/performance.md). glibc's own tunables cannot stop it
(TensorFlow allocates from its worker threads, whose arenas ``mmap`` large blocks whatever
``mmap_max`` says). mimalloc, from the ``cmeel-mimalloc`` wheel that requirements.txt pins,
reuses the freed memory when told never to purge it (``MIMALLOC_PURGE_DELAY=-1``).

An allocator can only replace malloc if it is loaded before anything else, so
:func:`use_fast_allocator` re-executes the current command once with ``LD_PRELOAD`` set; the
entry points (``trainer.py``, ``bench/*.py``, ``tools/run_demo.py``'s commands) call it first.
``DEC_SYSTEM_ALLOCATOR=1`` opts out. Where the library is missing or the platform is not
Linux it does nothing but say so once on stderr.
"""

from __future__ import annotations

import os
import sys
from importlib import metadata
from typing import Mapping, MutableMapping

OPT_OUT = "DEC_SYSTEM_ALLOCATOR"
"""Set to 1 to keep the system allocator (glibc malloc)."""
MARKER = "DEC_FAST_ALLOCATOR"
"""Set in the environment once the re-execution has been tried, so that it happens at most once."""
PACKAGE, LIBRARY = "cmeel-mimalloc", "cmeel.prefix/lib/libmimalloc.so.3"
SETTINGS = {"MIMALLOC_PURGE_DELAY": "-1"}
"""Keep freed memory mapped for reuse: purging it (after 10 ms by default) brings the faults back."""


def library_path() -> str | None:
    """The installed mimalloc shared library, or None."""
    try:
        path = metadata.distribution(PACKAGE).locate_file(LIBRARY)
    except metadata.PackageNotFoundError:
        return None
    return str(path) if os.path.isfile(path) else None


def fast_allocator_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``environ`` (default: this process's) with mimalloc preloaded and configured, for a child
    process; unchanged where opted out, off Linux or where the library is missing."""
    env = dict(os.environ if environ is None else environ)
    path = library_path()
    if env.get(OPT_OUT, "") not in ("", "0") or not sys.platform.startswith("linux") or path is None:
        return env
    preload = env.get("LD_PRELOAD", "").split()
    if path not in preload:
        env["LD_PRELOAD"] = " ".join([path, *preload])
    for key, value in SETTINGS.items():
        env.setdefault(key, value)
    return env


def loaded_allocator() -> str | None:
    """The path of the mimalloc library mapped into this process, or None."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                if "libmimalloc" in line:
                    return line.split(maxsplit=5)[-1].strip()
    except OSError:
        pass
    return None


def use_fast_allocator(environ: MutableMapping[str, str] | None = None) -> None:
    """Re-executes this command with mimalloc preloaded unless it already is (or cannot be).

    Call it before TensorFlow or NumPy is imported: the process is replaced, so nothing done
    before the call survives. Returns normally when no re-execution is needed or possible,
    after one line on stderr (once per process tree) when the allocator is not in effect."""
    env = os.environ if environ is None else environ
    if env.get(OPT_OUT, "") not in ("", "0") or loaded_allocator() is not None or env.get(MARKER) == "off":
        return
    wanted = fast_allocator_env(env)
    if env.get(MARKER) or wanted.get("LD_PRELOAD") == env.get("LD_PRELOAD"):
        # Tried already, or nothing to add: the library is missing or failed to load.
        print(f"note: {PACKAGE} is not loaded ({library_path() or 'not installed'}): TensorFlow runs on "
              f"the system allocator, whose page faults make the CPU training step about 2x slower",
              file=sys.stderr)
        env[MARKER] = "off"
        return
    wanted[MARKER] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], wanted)
