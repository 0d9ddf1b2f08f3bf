"""`flush_denormals()`: a context in which CPU arithmetic treats denormal floats as zero.

Shared by every training loop. It knows nothing of models; it flips one process-wide
torch switch and puts it back.
"""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def flush_denormals():
    """Treat denormal floats (below ~1e-38) as zero while training.

    Gradients deep in a pretrained model can be that small (DPO's, scaled by beta, are the
    common case), and x86 CPUs handle such numbers in microcode: a SmolLM2-135M DPO step
    measured 13.8 s with them and 0.8 s without. Zeroing them changes no result that
    matters. torch has no getter for the setting, so it is switched off again afterwards.
    """
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
