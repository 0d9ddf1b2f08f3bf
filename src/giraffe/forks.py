"""What a process forked from one that has computed may use: one thread.

libgomp - the OpenMP runtime of torch's CPU build and of giraffe's compiled kernels - keeps
the thread team of a thread's last parallel region; in a child made by fork() those
threads do not exist, and the child's first parallel region waits for them forever
(measured 2026-12-07: a forked child's first `x @ x` in torch hangs, as does its first
giraffe generation; a gunicorn `--preload` server or a `multiprocessing` pool with the
"fork" start method meets it). One thread needs no team. `guard_forks`, called by the
loaders, registers once a handler that leaves a forked child one thread (torch's count,
and OMP_NUM_THREADS, which the kernels take where torch is not loaded), as torch's
DataLoader does for its workers; `note_if_forked`
says so once, where the child first computes. Loading models after the fork, or the
"spawn"/"forkserver" start methods, keep every thread. It does not know what is loaded.
"""

from __future__ import annotations

import os
import sys
import warnings

_guarded = False  # the handler is registered (once a process)
_forked_unsaid = False  # this process is such a child and has not been told so yet


def guard_forks() -> None:
    """Register (once) the handler that leaves a forked child one thread."""
    global _guarded
    if not _guarded:
        os.register_at_fork(after_in_child=_one_thread)
        _guarded = True


def _one_thread() -> None:
    global _forked_unsaid
    # the kernels' count where torch is not loaded (giraffe.quant.library.threads), and
    # torch's if the child imports it later
    os.environ["OMP_NUM_THREADS"] = "1"
    torch = sys.modules.get("torch")  # (imported by whoever loaded a model)
    if torch is not None:
        torch.set_num_threads(1)  # sets a count; starts no parallel region
    _forked_unsaid = True


def note_if_forked() -> None:
    """Warn once in a forked child that it computes on one thread, and why."""
    global _forked_unsaid
    if _forked_unsaid:
        _forked_unsaid = False
        warnings.warn(
            "this process was forked from one that had computed on several threads; it "
            "computes on one (libgomp's threads do not survive fork(), and waiting for them "
            "would hang): load the model after forking, or use the 'spawn' or 'forkserver' "
            "start method, to use them all",
            stacklevel=3,
        )
