"""Python's cyclic garbage collector paused while giraffe starts up.

Importing torch and building a model create hundreds of thousands of objects that all
live on; the collector, triggered by the allocation count, walks them again and again
for nothing. Measured 2026-12-07 (gc callbacks, 2 threads): 376 collections during
`import torch` (0.13 s), a full one among giraffe's own imports (0.08-0.11 s), 57-238
during a GGUF load (0.01-0.02 s) - ~0.2 s of a 1.5-2.1 s start. Reference counting still
frees everything that dies meanwhile. When the block ends, everything it made goes straight
to the oldest generation (`gc.freeze()` then `gc.unfreeze()`, two list moves): otherwise
the first young-generation pass after it would walk them all once more (0.1 s after a
Gemma 3 load, measured). Nothing stays frozen: a process that loads and drops many models
gets their cycles back at the next full collection. It does not know what is loaded.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic collection inside the block (nested blocks: the outermost restores)."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.freeze()  # every tracked object, young ones included, set aside ...
            gc.unfreeze()  # ... and back, in the oldest generation
            gc.enable()
