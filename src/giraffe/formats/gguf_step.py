"""Open a GGUF model straight onto its compiled step's image: no torch, no modules.

An earlier load of the same file (the torch one, `giraffe.formats.gguf.load_gguf`) left
its step's image beside the file's int8 tiles (`giraffe.quant.step_image`); this maps the
file, the tiles and the image, and hands back a `StepModel`. None whenever that cannot
be exactly the torch load's step: no image yet or one from other sources, no kernel
library, float activations asked for (GIRAFFE_INT8_ACTIVATIONS=0), the tile cache off,
a family the compiled step does not run. It does not read tokenizers (the caller reads
the same header for that).
"""

from __future__ import annotations

from pathlib import Path

from giraffe.formats.gguf_config import config_from_gguf
from giraffe.quant import file_cache, library, step_image
from giraffe.quant.step_model import StepModel


def open_step_model(path: Path, reader) -> StepModel | None:
    if not (library.available() and library.int8_activations() and file_cache.enabled()):
        return None
    if not hasattr(reader, "map_span"):  # the gguf package's reader maps nothing we can name
        return None
    cfg = config_from_gguf(reader, str(path))
    if not cfg.compiled_block:
        return None
    step = step_image.load(file_cache.cache_dir_for(Path(path)), cfg, reader)
    return None if step is None else StepModel(cfg, step)
