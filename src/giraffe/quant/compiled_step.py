"""Run a model's compiled step (csrc/qmatmul.c's `giraffe_decode_layers`) on numpy buffers.

`CompiledStep` holds one model's fixed C arguments - one `LayerStep` per layer, the head
and the embedding table as `PackedMatrix` structs, the final norm - and makes the calls:
a prompt in pieces of at most `prompt_rows` rows (its scratch stays bounded), one row per
sequence of a batch, the RoPE tables grown when a position passes them, the scratch
sized as the library lays it out, the status codes turned into errors. It imports no
torch: `giraffe.quant.decode_step.FastDecode` builds one from a torch model's packed
modules (and adapts tensors to it), and `giraffe.quant.step_image` rebuilds one from a
file without torch at all. It knows the structs and the buffers, not where the weights
came from, nor models, caches or sampling. The structs are mirrored from csrc/qmatmul.c
and checked against the library (`check_structs`), field by field.
"""

from __future__ import annotations

import ctypes
import itertools
import math
import threading
from dataclasses import dataclass

import numpy as np

from giraffe.quant import library

MAX_PARTS = 3  # as csrc/qmatmul.c's packed_matrix


class PackedMatrix(ctypes.Structure):
    _fields_ = [
        ("w", ctypes.c_void_p * MAX_PARTS),
        ("kind", ctypes.c_int * MAX_PARTS),
        ("n_out", ctypes.c_int64 * MAX_PARTS),
        ("n_parts", ctypes.c_int),
        ("n_in", ctypes.c_int64),
        ("bias", ctypes.c_void_p),
        ("q8", ctypes.c_void_p * MAX_PARTS),
        ("dm8", ctypes.c_void_p * MAX_PARTS),
        ("nib8", ctypes.c_int64 * MAX_PARTS),
        ("use_i8", ctypes.c_int64),
        ("lora_a", ctypes.c_void_p * MAX_PARTS),
        ("lora_b", ctypes.c_void_p * MAX_PARTS),
        ("lora_r", ctypes.c_int64 * MAX_PARTS),
        ("lora_scale", ctypes.c_float * MAX_PARTS),
        ("sform8", ctypes.c_int64 * MAX_PARTS),
    ]


class LayerStep(ctypes.Structure):
    """csrc/qmatmul.c's layer_step: one layer's arguments, declared once on each side.

    The library reports its size and the C side checks the `size` stamped here, so a
    struct that drifted on one side is refused, never read wrongly."""

    _P, _I64 = ctypes.c_void_p, ctypes.c_int64
    _M = ctypes.POINTER(PackedMatrix)
    _fields_ = [
        ("size", _I64), ("x", _P), ("n", _I64), ("dim", _I64),
        ("attn_norm", _P), ("mlp_norm", _P), ("eps", ctypes.c_float),
        ("qkv", _M), ("o", _M), ("gate_up", _M), ("down", _M),
        ("n_heads", ctypes.c_int), ("kv_heads", ctypes.c_int), ("head_dim", ctypes.c_int),
        ("cos", _P), ("sin", _P), ("k_cache", _P), ("v_cache", _P),
        ("row_stride", _I64), ("slots", _P), ("max_len", _I64), ("window", _I64),
        ("scratch", _P), ("n_threads", ctypes.c_int),
        ("q_norm", _P), ("k_norm", _P), ("attn_post_norm", _P), ("mlp_post_norm", _P),
        ("norm_offset", ctypes.c_float), ("query_scale", ctypes.c_float),
        ("attn_softcap", ctypes.c_float), ("activation", ctypes.c_int),
        ("layer_norm", ctypes.c_int), ("attn_norm_bias", _P), ("mlp_norm_bias", _P),
        ("rope_dims", ctypes.c_int), ("plain_mlp", ctypes.c_int), ("parallel", ctypes.c_int),
        ("local_rope", ctypes.c_int), ("positions", _P),
    ]  # fmt: skip


class DecodeCall(ctypes.Structure):
    """csrc/qmatmul.c's decode_call: what every layer of one call shares."""

    _P, _I64 = ctypes.c_void_p, ctypes.c_int64
    _fields_ = [
        ("size", _I64), ("x", _P), ("n", _I64),
        ("cos", _P), ("sin", _P), ("cos_local", _P), ("sin_local", _P),
        ("positions", _P), ("rope_rows", _I64),
        ("k_cache", _P), ("v_cache", _P), ("layer_stride", _I64),
        ("row_stride", _I64), ("slots", _P), ("max_len", _I64),
        ("scratch", _P), ("n_threads", ctypes.c_int),
        ("final_norm", _P), ("final_norm_bias", _P), ("team", ctypes.c_int),
        ("ids", _P), ("embed", ctypes.POINTER(PackedMatrix)), ("embed_scale", ctypes.c_float),
        ("head", ctypes.POINTER(PackedMatrix)), ("logits", _P), ("argmax", _P),
    ]  # fmt: skip


PROMPT_ROWS = 512  # FastDecode.prompt_rows' default (at least 4)
ROPE_TOO_SHORT = -2000  # giraffe_decode_layers: a position is past the RoPE tables
BAD_TOKEN_ID = -3000  # giraffe_decode_layers: an id outside the embedding table

# csrc/qmatmul.c's ACT_SILU, ACT_GELU_TANH, ACT_GELU (erf), ACT_RELU
ACTIVATIONS = {"silu": 0, "gelu_tanh": 1, "gelu": 2, "relu": 3}


def check_structs() -> None:
    """KernelMismatchError when the library's structs differ from these mirrors: in size, or
    in any field's place (a mirror listing fields in another order has the same size)."""
    mirrors = (
        ("layer_step", LayerStep),
        ("packed_matrix", PackedMatrix),
        ("decode_call", DecodeCall),
    )
    for name, mirror in mirrors:
        theirs = library.struct_size(name)
        if theirs != ctypes.sizeof(mirror):
            raise library.KernelMismatchError(
                f"csrc/qmatmul.c's {name} is {theirs} bytes, giraffe's mirror "
                f"{ctypes.sizeof(mirror)}; the two declarations must change together"
            )
        ours = [(field, getattr(mirror, field).offset) for field, *_ in mirror._fields_]
        theirs = library.struct_fields(name)
        if ours != theirs:
            differ = next((a, b) for a, b in itertools.zip_longest(ours, theirs) if a != b)
            raise library.KernelMismatchError(
                f"csrc/qmatmul.c's {name} and giraffe's mirror place their fields differently "
                f"(first: C {differ[1]}, Python {differ[0]}); declare the same fields in the "
                "same order on both sides"
            )


@dataclass
class CacheSpan:
    """Where a call's keys and values go: both caches' addresses and their strides in
    floats (layer to layer, row to row of a batch; 0: a prompt's rows share one row)."""

    k: int
    v: int
    layer_stride: int
    row_stride: int
    max_len: int


@dataclass
class NewRows:
    """One call's new rows: x (n, C) float32 for the first layer, their cache slots and
    positions (n,) int64, the ids the C step fills x from (None: x is filled), and whether
    they are one sequence's prompt (sharing its cache) rather than decode rows."""

    x: np.ndarray
    slots: np.ndarray
    at: np.ndarray
    ids: np.ndarray | None
    shared: bool


ALIGN = 64  # bytes: one AVX-512 register, one cache line (torch's CPU allocator aligns so)


def aligned(shape, dtype, zeros: bool = False) -> np.ndarray:
    """A new array whose first item sits on a 64-byte boundary, as the C step's buffers
    must: numpy's own start 16 bytes past one, and every 64-byte vector load or store of
    the step then splits two cache lines (measured 2026-12-07 on SmolLM2 Q4_0: 512-token
    prompts ~10 % slower). zeros: filled with zeros (pages the OS zeroes on first touch)."""
    dtype = np.dtype(dtype)
    # (math.prod: np.prod of a tuple costs ~5 us, and logits are allocated every token)
    nbytes = math.prod(shape if isinstance(shape, tuple) else (shape,)) * dtype.itemsize
    raw = (np.zeros if zeros else np.empty)(nbytes + ALIGN, np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def pointer(a: np.ndarray | None, offset_items: int = 0) -> int | None:
    """The address of a's item `offset_items` (None for None): what a C field holds."""
    return None if a is None else a.ctypes.data + offset_items * a.itemsize


class CompiledStep:
    """One model's compiled step: its structs, and calls on numpy buffers.

    rope_tables(need): the RoPE (cos, signed sin) tables, each (rows, R) float32, for at
    least `need` positions: the main ones, then the sliding layers' own (or the main again);
    None for learned positions. held: the arrays the structs point into (kept alive)."""

    def __init__(
        self,
        cfg,
        steps,
        head: PackedMatrix | None,
        embed: PackedMatrix | None,
        final_norm: tuple,
        rope_tables,
        held: tuple = (),
    ) -> None:
        self.cfg, self.steps, self.head, self.embed = cfg, steps, head, embed
        self.final_norm, self.rope_tables = final_norm, rope_tables
        self._held = held
        self._head_ptr = None if head is None else ctypes.pointer(head)
        self._embed_ptr = None if embed is None else ctypes.pointer(embed)
        self.fn = library.decode_layer_function()
        # Gemma's sqrt(width), rounded to float32 first as the module path does; 0: none
        self.embed_scale = cfg.hidden_size**0.5 if cfg.scale_embed else 0.0
        self._scratch_floats: dict[tuple, int] = {}  # (rows, max_len, prompt) -> floats
        self._buffers: dict[str, np.ndarray] = {}  # see reused
        self.lock = threading.Lock()  # one call at a time: see FastDecode._rows
        self.scratch = aligned(0, np.float32)
        # decode rows run as one team of threads for all layers (csrc/decode_rows.h: the
        # same numbers as layer by layer, which tests compare by turning this off)
        self.team = True
        # a prompt's rows per call (longer prompts go in equal pieces): bounds the scratch
        # (~8 KB a row of attention buffers on SmolLM2-135M, plus the MLP's for 128 rows;
        # whole, an 8k prompt would hold ~70 MB of it). Measured 2026-12-07: a
        # 1,536-token SmolLM2 prompt 1-4 % slower in three pieces, Qwen2.5-0.5B's the same;
        # pieces of 256 cost Qwen's 512-token prompt 8-10 %, hence 512 (llama.cpp's batch)
        self.prompt_rows = PROMPT_ROWS
        # RoPE tables the C step reads by position, grown on demand; none for learned positions
        self.rope: list[tuple[np.ndarray, np.ndarray]] = []

    @property
    def head_width(self) -> int:
        return int(self.head.n_out[0])

    def head_runs(self, rows: int) -> bool:
        """Whether the C step's head takes these rows: on the int8 GEMM here (FastDecode
        adds the float kernel's case)."""
        m = self.head
        return m is not None and bool(m.use_i8 and m.q8[0])

    def run_rows(self, rows: NewRows, cache: CacheSpan, head_rows: int) -> tuple | None:
        """Every layer over the rows (a prompt in pieces), then, when head_rows > 0, the head
        over the last head_rows rows: (logits (head_rows, V) float32, argmax list), else None
        (x then holds the final-normed rows)."""
        n = len(rows.at)
        # a long prompt in pieces of (nearly) equal size, none of one row (which would take
        # the decode path's attention) as prompt_rows >= 4: the scratch stays that of
        # `prompt_rows` rows however long the prompt
        pieces = -(-n // self.prompt_rows) if rows.shared else 1
        bounds = [i * n // pieces for i in range(pieces + 1)]
        self._ensure_scratch(bounds[1] + (n % pieces > 0), cache.max_len, prompt=rows.shared)
        out = None
        if head_rows:  # (rows, V) logits (the caller's) and (rows,) argmax, by the last piece
            out = aligned((head_rows, self.head_width), np.float32)
            out = out, self.reused("argmax", head_rows, np.int64)
        for start, stop in itertools.pairwise(bounds):
            self._call(cache, rows, start, stop - start, out if stop == n else None)
        return None if out is None else (out[0], out[1].tolist())

    def _call(self, cache: CacheSpan, rows: NewRows, start: int, count: int, out) -> None:
        """Rows start .. start+count-1 through every layer: looked up first when the rows
        have ids, through the head into `out` ((logits, argmax) arrays) when given."""
        call = DecodeCall(
            size=ctypes.sizeof(DecodeCall), x=pointer(rows.x, start * rows.x.shape[1]), n=count
        )
        if rows.ids is not None:
            call.ids, call.embed = pointer(rows.ids, start), self._embed_ptr
            call.embed_scale = self.embed_scale
        if out is not None:
            call.head = self._head_ptr
            call.logits, call.argmax = pointer(out[0]), pointer(out[1])
        call.k_cache, call.v_cache = cache.k, cache.v
        call.layer_stride, call.row_stride = cache.layer_stride, cache.row_stride
        call.slots, call.max_len = pointer(rows.slots, start), cache.max_len
        call.scratch, call.n_threads = pointer(self.scratch), library.threads()
        call.final_norm, call.final_norm_bias = self.final_norm
        call.team = self.team
        call.positions = pointer(rows.at, start)
        status = self._run(call, rows.at)
        if status == BAD_TOKEN_ID:
            raise IndexError(f"a token id is outside the vocabulary (0..{self.embed.n_out[0] - 1})")
        if status != 0:
            raise RuntimeError(
                f"the compiled decode step refused layer {-1 - status} "
                f"(slots {rows.slots[start : start + count].tolist()})"
            )

    def _run(self, call: DecodeCall, positions: np.ndarray) -> int:
        """Run every layer; a position past the RoPE tables grows them (to the largest of
        `positions`) and runs again (the C step checks positions before it writes anything)."""
        for _ in range(2):
            if self.rope:
                (call.cos, call.sin), (call.cos_local, call.sin_local) = (
                    (pointer(cos), pointer(sin)) for cos, sin in self.rope
                )
                call.rope_rows = self.rope[0][0].shape[0]
            status = self.fn(ctypes.byref(call), self.steps, len(self.steps))
            if status != ROPE_TOO_SHORT:
                return status
            self.rope = self.rope_tables(int(positions.max()) + 1)
        return status

    def reused(self, name: str, numel: int, dtype) -> np.ndarray:
        """A buffer of at least numel values kept between calls (grown when too small; the
        C step fills it within one call): the first numel. A fresh array costs ~10-20 us a
        token once the weights have swept the caches."""
        buffer = self._buffers.get(name)
        if buffer is None or buffer.size < numel:
            buffer = self._buffers[name] = aligned(numel, dtype)
        return buffer[:numel]

    def _ensure_scratch(self, n: int, max_len: int, prompt: bool) -> None:
        """Room for csrc/qmatmul.c's buffers of a call of n rows, as the library lays them
        out (giraffe_decode_scratch: no score rows where the flash kernel runs, the MLP's
        buffers for at most MLP_ROWS rows); asked once per shape of call."""
        key = (n, max_len, prompt)
        need = self._scratch_floats.get(key)
        if need is None:
            need = library.decode_scratch_floats(self.steps, n, max_len, prompt)
            self._scratch_floats[key] = need
        if self.scratch.size < need:
            self.scratch = aligned(need, np.float32)
