"""Our fast GGUF reader against the `gguf` package's reader, and on damaged files."""

from __future__ import annotations

import numpy as np
import pytest

from giraffe.config import PRESETS
from giraffe.files import gguf_reader
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


@pytest.mark.parametrize("window", [1, 9, 4096])
def test_vocabulary_strings_across_any_window_edge(smollm2_gguf, monkeypatch, window):
    """The string arrays are read through a window of the map refilled at the string
    that does not fit: a window of 1 byte refills at every string (and at lengths cut
    in two), 9 at most lengths, 4096 now and then; all read what one big window reads."""
    whole = FastGGUFReader(smollm2_gguf).fields
    monkeypatch.setattr(gguf_reader, "WINDOW", window)
    assert FastGGUFReader(smollm2_gguf).fields == whole


def test_a_string_past_the_end_of_the_file_is_a_damaged_header(tmp_path, smollm2_gguf):
    data = smollm2_gguf.read_bytes()
    at = data.index(b"tokenizer.ggml.tokens") + len("tokenizer.ggml.tokens") + 4 + 4 + 8
    cut = tmp_path / "cut.gguf"  # the first token's length, then 5 of its bytes
    cut.write_bytes(data[: at + 8 + 5])
    with pytest.raises(GGUFFormatError, match="truncated"):
        FastGGUFReader(cut)


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


def test_ggml_type_table_equals_the_gguf_package():
    """giraffe's own ggml type table (the reader's, so loading never imports `gguf`): the
    ids and block sizes of every type both know are the same, and giraffe lacks none of
    those up to its newest."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    from giraffe.files.ggml_types import BLOCK_SIZES, GGMLType

    assert set(BLOCK_SIZES) == set(GGMLType)
    newest = max(GGMLType)
    for theirs in GGMLQuantizationType:
        if theirs <= newest:
            ours = GGMLType[theirs.name]
            assert int(ours) == int(theirs) and BLOCK_SIZES[ours] == GGML_QUANT_SIZES[theirs]
    assert all(GGMLQuantizationType(int(t)).name == t.name for t in GGMLType)


def test_a_tensor_type_giraffe_does_not_know_is_named(tmp_path):
    path = save_gguf(Decoder(PRESETS["llama-tiny"]), tmp_path / "m.gguf", dtype="f32")
    raw = bytearray(path.read_bytes())
    name = b"output_norm.weight"
    at = raw.index(name) + len(name)  # then n_dims (u32), dims (u64 each), the type (u32)
    n_dims = int.from_bytes(raw[at : at + 4], "little")
    raw[at + 4 + 8 * n_dims : at + 8 + 8 * n_dims] = (99).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(GGUFFormatError, match="output_norm.weight has ggml type 99, which giraffe"):
        FastGGUFReader(path)
