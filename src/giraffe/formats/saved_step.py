"""Open a model straight onto its compiled step's saved image: no torch, no modules.

An earlier load of the same model with torch (a packed GGUF file, `load_gguf`; a giraffe
group-wise int8/int4 folder, `load_hf`) left its step's image in the model's cache folder
(`giraffe.quant.step_image`); this maps it (and the file and its tiles, for GGUF) and
hands back a `StepModel`. None whenever that cannot be exactly the torch load's step: no
image yet or one from other sources, no kernel library, float activations asked for
(GIRAFFE_INT8_ACTIVATIONS=0), the cache off (GIRAFFE_TILE_CACHE=0), a family the compiled
step does not run, a folder of float weights. It does not read tokenizers.
"""

from __future__ import annotations

from pathlib import Path

from giraffe.formats.gguf_config import config_from_gguf
from giraffe.formats.hf_config import config_from_hf, read_json
from giraffe.quant import file_cache, step_image
from giraffe.quant.step_model import StepModel


def open_saved_step(path: Path, reader=None) -> StepModel | None:
    """path: a GGUF file (with its opened `reader`, whose header gives the config) or a
    model folder."""
    if not step_image.kept():
        return None
    if path.is_dir():
        raw = read_json(path / "config.json")
        if "quantization_config" not in raw:
            return None  # float weights: the torch model runs them
        cfg, file_map = config_from_hf(raw, str(path / "config.json")), None
    elif hasattr(reader, "map_span"):  # (the gguf package's reader maps nothing we can name)
        cfg, file_map = config_from_gguf(reader, str(path)), reader
    else:
        return None
    if not cfg.compiled_block:
        return None
    step = step_image.load(file_cache.cache_dir_for(path), cfg, file_map)
    return None if step is None else StepModel(cfg, step)
