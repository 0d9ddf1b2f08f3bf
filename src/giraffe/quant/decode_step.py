"""New tokens through a whole packed decoder with one compiled call for all its layers.

The plain path runs ~35 small torch ops per layer; for a 135M model at batch 1 their
dispatch costs as much as the matrix products. `FastDecode` hands the layers to
`giraffe_decode_layers` (csrc/qmatmul.c), which runs each in turn with no Python between
them: norms, fused q/k/v, RoPE, the KV-cache write, attention over the cache, o_proj, the
MLP and the residuals, with the wiring the config's fields describe where a family adds
it (`ModelConfig.compiled_block` says which blocks: QK-norm, (offset + w) norms,
LayerNorms, sandwich norms, gated or plain MLPs, a query scale, soft-capped scores,
partial RoPE, parallel residuals, per-layer windows and RoPE bases, scaled embeddings
and learned positions; never a family name) - for one sequence's next
token, for the n sequences of a continuous batch (each at its own cache slot), or for a
whole prompt of one sequence (rows sharing its cache, causal flash attention; a prompt
longer than `prompt_rows` goes in pieces, so its scratch stays bounded). Where the model's
embedding table and head qualify (`_ends`), the same C call also looks the rows up and,
for `next_logits`, runs the head and each row's argmax: no Python between a token's id
and its logits. It only
takes the cases it can do exactly as the model would (no padding mask, no attention
maps asked for, every projection packed in ggml blocks, int8 tiles, group-wise
int8/int4 or F16/BF16, optionally under a LoRA adapter whose low-rank delta the C step
adds); everything else returns None and the model runs its ordinary path. Tests hold the
two equal.
The C arguments (one `LayerStep` per layer, fixed at build; one `DecodeCall` per call) and
the calls themselves are `giraffe.quant.compiled_step`'s, which needs no torch; this module
builds them from a torch model's packed modules and hands tensors in and out.
"""

from __future__ import annotations

import ctypes
import weakref

import numpy as np
import torch

from giraffe.quant import kernels
from giraffe.quant.compiled_step import (
    ACTIVATIONS,
    MAX_PARTS,
    CacheSpan,
    CompiledStep,
    LayerStep,
    NewRows,
    PackedMatrix,
    aligned,
    check_structs,
)
from giraffe.quant.groupwise import GroupQuantLinear
from giraffe.quant.linear import (
    KERNEL_KINDS,
    FusedQuant,
    QuantLinear,
    int8_activations,
    kernel_max_rows,
)


def _adapter(p) -> tuple:
    """(packed base, adapter or None): a low-rank adapter is any layer holding a `base` and
    `lora_A`/`lora_B` linears with a `scale` (giraffe.train.lora's LoraLinear, seen only by
    these attributes: quant sits below train)."""
    base = getattr(p, "base", None)
    if base is not None and hasattr(p, "lora_A") and hasattr(p, "lora_B"):
        return base, p
    return p, None


def _single(p) -> bool:
    """One packed product the C step can run: ggml blocks or int8 tiles."""
    if isinstance(p, GroupQuantLinear):
        return p.int8_weights() is not None
    return isinstance(p, QuantLinear) and p.kind in KERNEL_KINDS


class GroupParts:
    """Packed layers of the same input side by side (q|k|v, gate|up) with no fused buffer,
    each part its own segment: group-wise layers, or parts under LoRA adapters (the C step
    adds each adapter's low-rank delta beside its packed product)."""

    def __init__(self, parts: list) -> None:
        self.parts = parts
        self.bases, self.adapters = zip(*(_adapter(p) for p in parts), strict=True)
        self.in_features = self.bases[0].in_features
        biases = [b.bias for b in self.bases]
        self.bias = None if biases[0] is None else torch.cat([b.detach() for b in biases])
        self.segments = [
            (b.packed, b.kind, b.out_features)
            if isinstance(b, QuantLinear)
            else (None, b.int8_weights().kind, b.out_features)
            for b in self.bases
        ]

    def int8_segments(self) -> list[kernels.Int8Weights | None]:
        return [b.int8_weights() for b in self.bases]

    @staticmethod
    def of(parts) -> GroupParts | None:
        bases = [_adapter(p)[0] for p in parts]
        if len(parts) > MAX_PARTS or not all(_single(b) for b in bases):
            return None
        if len({(b.in_features, b.bias is None) for b in bases}) != 1:
            return None
        return GroupParts(list(parts))


def _matrix(m) -> PackedMatrix:
    """A packed projection (or several side by side) as the C struct, each part its own type.

    Group-wise and compacted parts have no ggml blocks (NULL): they run only on the int8 GEMM."""
    if not isinstance(m, (FusedQuant, GroupParts)):
        m = GroupParts([m])
    bias = None if m.bias is None else m.bias.detach().contiguous()
    matrix = PackedMatrix()
    for i, (packed, kind, n_out) in enumerate(m.segments):
        matrix.w[i], matrix.kind[i], matrix.n_out[i] = (
            None if packed is None else packed.data_ptr(),
            kernels.KIND_CODES[kind],
            n_out,
        )
    matrix.n_parts, matrix.n_in = len(m.segments), m.in_features
    matrix.bias = None if bias is None else bias.data_ptr()
    matrix._keep = bias  # the struct holds a raw pointer: keep the tensor alive
    matrix._source = m
    return matrix


def _attach_int8(matrix: PackedMatrix) -> None:
    """Give the struct its parts' int8 GEMM weights (repacked now if not yet)."""
    for i, w in enumerate(matrix._source.int8_segments()):
        if w is not None:
            matrix.q8[i], matrix.dm8[i], matrix.nib8[i] = w.q.data_ptr(), w.dm.data_ptr(), w.nibbles
            matrix.sform8[i] = w.scale_form


def _adapters(matrix: PackedMatrix) -> list[tuple]:
    """(matrix, part, adapter) for each LoRA adapter among a struct's parts."""
    return [(matrix, i, a) for i, a in enumerate(getattr(matrix._source, "adapters", ())) if a]


def _set_adapter(matrix: PackedMatrix, i: int, adapter) -> bool:
    """Point the struct at an adapter's current A and B (none while it is disabled).
    False when the module path must run instead (dropout active in training mode)."""
    if adapter.disabled or adapter.merged:
        matrix.lora_r[i] = 0
        return True
    if adapter.training and isinstance(adapter.dropout, torch.nn.Dropout):
        return False  # dropout would apply on the module path
    a, b = adapter.lora_A.weight, adapter.lora_B.weight
    if a.dtype != torch.float32 or not (a.is_contiguous() and b.is_contiguous()):
        return False
    matrix.lora_a[i], matrix.lora_b[i] = a.data_ptr(), b.data_ptr()
    matrix.lora_r[i], matrix.lora_scale[i] = a.shape[0], adapter.scale
    return True


def _packed(p) -> bool:
    if isinstance(p, (FusedQuant, GroupParts)):
        return len(p.segments) <= MAX_PARTS
    return GroupParts.of([p]) is not None


class FastDecode(CompiledStep):
    """A torch model's compiled step: built from its packed modules (`build`), called with
    its tensors and caches, handing tensors back; the calls themselves are CompiledStep's."""

    def __init__(
        self,
        model,
        layers: list[tuple],
        norms: list[dict],
        head: PackedMatrix | None = None,
        embed: PackedMatrix | None = None,
    ) -> None:
        """head / embed: the output head and the embedding table as structs, where the C
        step can run them as the module path does (`_ends`); None: Python runs them."""
        cfg = model.config
        self.layers = layers  # per layer: (attn_norm, mlp_norm, qkv, o, gate_up, down)
        self.extra_norms = norms
        self._next_slot = np.zeros(1, np.int64)  # (1,): see _slots
        self.int8_on = None  # whether the C step's products use the int8 GEMM (None: not set)
        # group-wise and compacted weights exist only as int8-GEMM tiles: no float kernel
        self.int8_only = any(
            not m.w[i] for layer in layers for m in layer[2:] for i in range(m.n_parts)
        )
        check_structs()
        self.local_rope = any(cfg.layer_local_rope(i) for i in range(len(layers)))
        norm = model.norm  # the final norm, of the blocks' kind: applied by the C step
        self._norm_weights = [norm.weight.detach(), getattr(norm, "bias", None)]
        self._model = weakref.ref(model)  # its rotary modules make the RoPE tables
        # one C array: giraffe_decode_layers runs them all in one call
        steps = (LayerStep * len(layers))(
            *(
                self._step(cfg, i, layer, extra)
                for i, (layer, extra) in enumerate(zip(layers, norms, strict=True))
            )
        )
        final_norm = tuple(None if t is None else t.data_ptr() for t in self._norm_weights)
        super().__init__(cfg, steps, head, embed, final_norm, self._rope_tables)
        self.adapters = [a for layer in layers for m in layer[2:] for a in _adapters(m)]
        # every struct whose products may take the int8 GEMM (not a lookup-only table)
        self.products = [m for layer in layers for m in layer[2:]] + ([head] if head else [])

    @staticmethod
    def _step(cfg, i: int, layer: tuple, norms: dict) -> LayerStep:
        """Layer i's fixed arguments; each call fills in the rows, cache and scratch.

        norms: the block's optional norm weights by LayerStep field (q_norm, k_norm,
        attn_post_norm, mlp_post_norm, the pre-norms' biases), as the block has them."""
        attn_norm, mlp_norm, qkv, o, gate_up, down = layer
        step = LayerStep(size=ctypes.sizeof(LayerStep), dim=cfg.hidden_size, eps=cfg.norm_eps)
        step.attn_norm, step.mlp_norm = attn_norm.data_ptr(), mlp_norm.data_ptr()
        step.qkv, step.o, step.gate_up, step.down = (
            ctypes.pointer(m) for m in (qkv, o, gate_up, down)
        )
        step.n_heads, step.kv_heads, step.head_dim = cfg.n_heads, cfg.kv_heads, cfg.dim_per_head
        step.window = cfg.layer_window(i) or 0
        for field, weight in norms.items():
            setattr(step, field, weight.data_ptr())
        step.norm_offset, step.query_scale = cfg.norm_offset, cfg.query_scale or 0.0
        step.attn_softcap, step.activation = cfg.attn_softcap or 0.0, ACTIVATIONS[cfg.activation]
        step.layer_norm, step.plain_mlp = cfg.norm == "layernorm", cfg.mlp == "plain"
        step.parallel = cfg.parallel_residual
        step.rope_dims = -1 if cfg.position != "rope" else cfg.rotary_dims
        step.local_rope = cfg.layer_local_rope(i)  # the sliding layers' own RoPE (Gemma 3)
        return step

    @staticmethod
    def build(model, fused: list) -> FastDecode | None:
        """A FastDecode when every layer qualifies, else None.

        fused: per layer, its fused packed products (`.qkv`, `.gate_up`: a FusedQuant or
        None; giraffe.quant.runtime.LayerKernels); where None, the parts go side by side."""
        cfg = model.config
        if not cfg.compiled_block or kernels.decode_layer_function() is None:
            return None
        layers, extras = [], []
        for block, own in zip(model.layers, fused, strict=True):
            attn, mlp = block.attn, block.mlp
            qkv = own.qkv or GroupParts.of([attn.q_proj, attn.k_proj, attn.v_proj])
            ups = [mlp.gate_proj, mlp.up_proj] if mlp.gated else [mlp.up_proj]
            gate_up = own.gate_up or GroupParts.of(ups)
            parts = [qkv, attn.o_proj, gate_up, mlp.down_proj]
            if not all(_packed(p) for p in parts):
                return None
            norms = (block.attn_norm.weight.detach(), block.mlp_norm.weight.detach())
            layers.append((*norms, *[_matrix(p) for p in parts]))
            extras.append(_extra_norms(block))
        return FastDecode(model, layers, extras, *_ends(model))

    def __call__(self, model, ids, cache, positions) -> torch.Tensor | None:
        """New tokens -> final-norm hidden states (B, T, C); None if it cannot take them.

        (n, 1): one token for each of n rows; n > 1 needs a cache that says where each
        row's token goes (`slots`, as `giraffe.nn.slot_cache.BatchView` does), and each
        row attends to its own slots only. (1, T): a prompt (or its continuation) of one
        sequence, written at the cache's next T slots, attending causally.
        """
        done = self._rows(model, ids, cache, positions, head=False)
        return None if done is None else torch.from_numpy(done[0]).view(*ids.shape, -1)

    def next_logits(self, model, ids, cache, positions) -> tuple | None:
        """The same call through the head, in the same C call: (logits (B, V) float32 numpy
        of each sequence's last new token, each row's first maximal logit as a list), or
        None when the step or the head cannot take it (then nothing ran)."""
        done = self._rows(model, ids, cache, positions, head=True)
        return None if done is None else done[1]

    def _rows(self, model, ids, cache, positions, head: bool) -> tuple | None:
        """(x (n, C) final-normed, (logits, argmax) or None), or None when it cannot.

        One call at a time: threads sharing a model share this step's scratch, buffers
        and RoPE tables (a second thread growing the scratch would free it under the
        first one's C call). What it hands back is the caller's own."""
        with self.lock:
            return self._rows_locked(model, ids, cache, positions, head)

    def _rows_locked(self, model, ids, cache, positions, head: bool) -> tuple | None:
        B, T = ids.shape
        if torch.is_grad_enabled() or cache.k.shape[3] != cache.max_len:
            return None
        if cache.k.stride() != cache.v.stride():
            return None  # the C step walks both caches with one set of strides
        int8 = int8_activations()
        if self.int8_only and not int8:
            return None  # float activations: the module path dequantizes
        slots, shared = self._slots(cache, B, T)
        if slots is None or not all(_set_adapter(*a) for a in self.adapters):
            return None
        n = B * T
        self.use_int8(int8)
        head_rows = 1 if shared else n  # a prompt's next token follows its last row only
        if head and not self.head_runs(head_rows):
            return None
        if positions is None:
            positions = torch.from_numpy(slots)[:, None]
        # (n, C), (n,) or None; x is handed back only as hidden states, else reused
        x, token_ids = self._first_rows(model, ids, positions, reuse=head)
        rows = NewRows(x, slots, _flat_int64(positions), token_ids, shared)
        k = cache.k
        # floats between rows' (H, S, D) caches; 0: a prompt's rows share one
        span = CacheSpan(
            k.data_ptr(),
            cache.v.data_ptr(),
            k.stride(0),
            0 if shared else k.stride(1),
            cache.max_len,
        )
        out = self.run_rows(rows, span, head_rows if head else 0)
        cache.advance(T)
        return x, out

    def _first_rows(self, model, ids, positions, reuse: bool) -> tuple:
        """The rows the first layer reads (n, C) and the ids the C step fills them from;
        None: they are filled here, as the module path forms them. reuse: the rows may go
        in a buffer kept for the next call (they are not handed back)."""
        e = self.embed
        if e is None or not (e.w[0] or e.q8[0]):  # (a lookup from tiles needs them repacked)
            return self._embed(model, ids, positions).numpy(), None
        flat = _flat_int64(ids)  # (n,)
        n, C = flat.size, self.cfg.hidden_size
        x = (
            self.reused("x", n * C, np.float32).reshape(n, C)
            if reuse
            else aligned((n, C), np.float32)
        )
        return x, flat

    def head_runs(self, rows: int) -> bool:
        """Whether the C step's head takes these rows as the module path's would: on the
        int8 GEMM, or on the packed float kernel within its rows (past them the module path
        dequantizes and multiplies in torch)."""
        if super().head_runs(rows):
            return True
        m = self.head
        if m is None:
            return False
        kind = m._source.segments[0][1]
        return bool(m.w[0]) and kind in KERNEL_KINDS and rows <= kernel_max_rows(kind)

    def _embed(self, model, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The rows the first layer reads (n, C) float32, as the module path forms them."""
        B, T = ids.shape
        x = model.embed(ids)  # (B, T, C)
        if self.cfg.scale_embed:  # as the module path: sqrt(width) rounded to the dtype first
            x = x * torch.tensor(self.cfg.hidden_size**0.5, dtype=x.dtype)
        if self.cfg.position == "learned":
            x = x + model.pos_embed(positions.reshape(B, T))
        return x.reshape(B * T, -1).contiguous().float()

    def _rope_tables(self, need: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """The model's RoPE (cos, signed sin) for positions 0 .. >= need-1, each (rows, R), as
        its rotary modules compute them (so every row equals the module path's); then the
        sliding layers' own (Gemma 3) or the same tables again. Rows: a power of two, at
        least 1024, so a growing context recomputes them a few times only."""
        rows = max(1024, 1 << (need - 1).bit_length())
        positions = torch.arange(rows)[None]  # (1, rows)
        model = self._model()

        def table(rotary) -> tuple[np.ndarray, np.ndarray]:
            return tuple(t.reshape(rows, -1).contiguous().numpy() for t in rotary(positions))

        main = table(model.rotary)
        return [main, table(model.rotary_local) if self.local_rope else main]

    def _slots(self, cache, B: int, T: int) -> tuple[np.ndarray | None, bool]:
        """(n,) cache slot of each new token, and whether they are one sequence's run."""
        slots = getattr(cache, "slots", None)
        if T == 1 and slots is not None:
            ok = len(slots) == B
            return (slots.to(torch.int64).contiguous().numpy() if ok else None), False
        if slots is not None or B != 1 or cache.batch != 1:
            return None, False
        if cache.length + T > cache.max_len:
            return None, False  # the module path says the cache is full
        if T > 1:
            return np.arange(cache.length, cache.length + T, dtype=np.int64), True
        # one token of one sequence (every greedy step): a reused array (the C step reads
        # it during this call only)
        self._next_slot[0] = cache.length
        return self._next_slot, False

    def arrays(self) -> list[np.ndarray]:
        """Every tensor the structs may point into (norms, biases, blocks, tiles), as bytes:
        what `giraffe.quant.step_image` needs to place each address."""
        tensors = list(self._norm_weights)
        for layer, extra in zip(self.layers, self.extra_norms, strict=True):
            tensors += [layer[0], layer[1], *extra.values()]
        for m in self.products + ([self.embed] if self.embed is not None else []):
            tensors.append(m._keep)
            # a fused buffer's own tiles or blocks, else its parts' (FusedQuant.parts,
            # GroupParts.bases)
            source = m._source
            for part in [source, *getattr(source, "bases", ()), *getattr(source, "parts", ())]:
                tiles = getattr(part, "_int8", None)
                tensors += [getattr(part, "packed", None), getattr(tiles, "q", None)]
                tensors.append(getattr(tiles, "dm", None))
        return [
            t.detach().contiguous().view(torch.uint8).numpy()
            for t in tensors
            if isinstance(t, torch.Tensor)
        ]

    def use_int8(self, on: bool) -> None:
        """Products take the int8 GEMM (weights repacked once, on first need) or not."""
        if on == self.int8_on:
            return
        for matrix in self.products:
            if on and not matrix.q8[0]:
                _attach_int8(matrix)
            matrix.use_i8 = int(on)
        self.int8_on = on


def _flat_int64(t: torch.Tensor) -> np.ndarray:
    """t's values in order as one contiguous int64 run, as numpy (a view of t when it
    already is one: the C step reads only its address)."""
    if t.dtype != torch.int64 or not t.is_contiguous():
        t = t.reshape(-1).to(torch.int64).contiguous()
    return t.numpy().reshape(-1)


def _ends(model) -> tuple[PackedMatrix | None, PackedMatrix | None]:
    """(head, embedding table) as the C step's structs, each None where Python must run it:
    the head must be one packed product with no adapter and no final soft-cap (the module
    path's tanh stays in torch); the table must be packed, looked up from its ggml blocks or
    (a tied head's) int8 tiles, with no learned positions to add. A tied table is one
    struct for both."""
    cfg = model.config
    table = getattr(model.embed, "table", None)  # a packed embedding's table
    linear = model.lm_head if model.lm_head is not None else table
    head = None
    if linear is not None and cfg.final_softcap is None and _adapter(linear)[1] is None:
        head = _matrix(linear) if _packed(linear) else None
    if table is None or cfg.position == "learned":
        return head, None
    if linear is table and head is not None:
        return head, head
    return head, _lookup_table(table)


def _lookup_table(table) -> PackedMatrix | None:
    """The struct the C step looks rows up in: a table's ggml blocks, or the int8 tiles that
    replaced them (a tied table: the head's resident copy, no repack); None for stored
    groups, which only Python reads."""
    if isinstance(table, QuantLinear):
        if table.packed is not None:  # its ggml blocks
            return _matrix(table) if table.kind in kernels.KIND_CODES else None
    elif not getattr(table, "compacted", False):
        return None  # stored groups
    if not _packed(table):
        return None
    matrix = _matrix(table)  # the tiles, already made: attaching them repacks nothing
    _attach_int8(matrix)
    return matrix


def _extra_norms(block) -> dict:
    """The block's norm weights beyond the two pre-norms' (and their LayerNorm biases), by
    LayerStep field; absent ones stay NULL."""
    owners = {
        "q_norm": (block.attn, "q_norm"),
        "k_norm": (block.attn, "k_norm"),
        "attn_post_norm": (block, "attn_post_norm"),
        "mlp_post_norm": (block, "mlp_post_norm"),
    }
    found = {
        field: getattr(owner, name).weight.detach()
        for field, (owner, name) in owners.items()
        if hasattr(owner, name)
    }
    for field, norm in (("attn_norm_bias", block.attn_norm), ("mlp_norm_bias", block.mlp_norm)):
        if getattr(norm, "bias", None) is not None:
            found[field] = norm.bias.detach()
    return found
