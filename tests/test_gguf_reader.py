"""Our fast GGUF reader against the `gguf` package's reader, and on damaged files."""

from __future__ import annotations

import numpy as np
import pytest

from giraffe.config import PRESETS
from giraffe.files.gguf_reader import FastGGUFReader, GGUFFormatError
from giraffe.formats.gguf import save_gguf
from giraffe.models import Decoder


def assert_same_as_gguf(path):
    import gguf

    ref, ours = gguf.GGUFReader(str(path)), FastGGUFReader(path)
    keys = [k for k in ref.fields if not k.startswith("GGUF.")]
    assert keys == list(ours.fields)
    for k in keys:
        assert ours.fields[k].contents() == ref.fields[k].contents(), k
    assert [t.name for t in ours.tensors] == [t.name for t in ref.tensors]
    for a, b in zip(ref.tensors, ours.tensors, strict=True):
        assert list(a.shape) == list(b.shape) and a.tensor_type == b.tensor_type
        assert a.data.shape == b.data.shape and np.array_equal(a.data, b.data), a.name


def test_real_model_file(smollm2_gguf):
    assert_same_as_gguf(smollm2_gguf)


@pytest.mark.parametrize("dtype", ["f32", "f16", "q4_1"])
def test_files_we_write(tmp_path, dtype):
    path = save_gguf(Decoder(PRESETS["llama-tiny"]), tmp_path / "m.gguf", dtype=dtype)
    assert_same_as_gguf(path)


def test_truncated_and_foreign_files(tmp_path, smollm2_gguf):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(smollm2_gguf.read_bytes()[:3_000_000])
    with pytest.raises(GGUFFormatError, match="truncated"):
        FastGGUFReader(cut)
    head = tmp_path / "head.gguf"
    head.write_bytes(smollm2_gguf.read_bytes()[:100_000])
    with pytest.raises(GGUFFormatError, match="truncated"):
        FastGGUFReader(head)
    other = tmp_path / "other.gguf"
    other.write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    with pytest.raises(GGUFFormatError, match="not a GGUF file"):
        FastGGUFReader(other)
