"""Parameter counts from a config equal the real model's; memory arithmetic is right."""

from __future__ import annotations

import pytest

from giraffe.config import PRESETS
from giraffe.explain.sizes import kv_cache_bytes, memory_table, total_parameters
from giraffe.models import Decoder


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_counted_parameters_equal_the_model(name):
    cfg = PRESETS[name]
    if cfg.n_layers * cfg.hidden_size > 20_000:
        import torch

        with torch.device("meta"):
            model = Decoder(cfg)
    else:
        model = Decoder(cfg)
    assert total_parameters(cfg) == model.num_parameters()


def test_smollm2_numbers():
    cfg = PRESETS["smollm2-135m"]
    assert total_parameters(cfg) == 134_515_008
    # 2 (k and v) x 30 layers x 3 kv heads x 64 dims x 4 bytes = 46,080 bytes per token
    assert kv_cache_bytes(cfg, 1) == 46_080
    fp16 = next(r for r in memory_table(cfg) if r["format"].startswith("fp16"))
    assert fp16["weights_bytes"] == 2 * 134_515_008
