"""The zoo's models: random init, no downloads. Each builder returns ``(model, inputs)`` for
``size="small"`` (CPU: compiles and searches in seconds under the Triton interpreter) or
``size="large"`` (realistic sizes for an H100)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SIZES = ("small", "large")


def _check(size: str) -> None:
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")


def _mlp(dims: list[int], last_act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if last_act or i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _fixed_bags(batch: int, pooling: int, rows: int, g: torch.Generator, device: str):
    """Bags of ``pooling`` ids each (DLRM's benchmark inputs): the same shapes for every table."""
    idx = torch.randint(0, rows, (batch * pooling,), generator=g)
    off = torch.arange(batch, dtype=torch.int64) * pooling
    return idx.to(device), off.to(device)


# -- (a) DLRM ------------------------------------------------------------------------------------
class DLRM(nn.Module):
    """Embedding bags (sum) + bottom MLP on dense features + pairwise dot interaction + top MLP."""

    def __init__(self, num_tables: int, rows: int, dim: int, dense_in: int, bottom: list[int], top: list[int]) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.EmbeddingBag(rows, dim, mode="sum") for _ in range(num_tables))
        self.bottom = _mlp([dense_in, *bottom, dim])
        n = num_tables + 1
        li, lj = torch.tril_indices(n, n, offset=-1)
        self.register_buffer("li", li, persistent=False)
        self.register_buffer("lj", lj, persistent=False)
        self.top = _mlp([dim + n * (n - 1) // 2, *top, 1], last_act=False)

    def forward(self, dense: torch.Tensor, indices: list[torch.Tensor], offsets: list[torch.Tensor]) -> torch.Tensor:
        x = self.bottom(dense)
        feats = torch.stack([x] + [t(i, o) for t, i, o in zip(self.tables, indices, offsets)], dim=1)  # [B, n, D]
        z = torch.bmm(feats, feats.transpose(1, 2))[:, self.li, self.lj]  # pairwise dots, lower triangle
        return torch.sigmoid(self.top(torch.cat([x, z], dim=1)))


def make_dlrm(size: str = "small", device: str = "cpu", seed: int = 0):
    _check(size)
    if size == "small":
        tables, rows, dim, dense_in, batch, pooling, bottom, top = 3, 100, 8, 4, 16, 2, [16], [16]
    else:  # Criteo-like: 26 tables, 1M rows each, 128-d, batch 16k
        tables, rows, dim, dense_in, batch, pooling, bottom, top = 26, 1_000_000, 128, 13, 16384, 20, [512, 256], [1024, 1024, 512, 256]
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    with torch.device(device):  # built in place: the large tables never touch host memory
        model = DLRM(tables, rows, dim, dense_in, bottom, top).eval()
    dense = torch.randn(batch, dense_in, generator=g).to(device)
    bags = [_fixed_bags(batch, pooling, rows, g, device) for _ in range(tables)]
    return model, (dense, [b[0] for b in bags], [b[1] for b in bags])


# -- (b) sequence recommender with jagged user histories ---------------------------------------------
class _JaggedToPadded(torch.autograd.Function):
    """``aten._jagged_to_padded_dense_forward`` (the forward op, unchanged) with a backward: ATen has no
    derivative for it, and its inverse ``_padded_dense_to_jagged_forward`` rejects histories longer than
    ``max_len`` (truncated here), so the jagged gradient is a gather: row t of bag b at position j gets
    ``grad[b, j]`` if j < max_len, else 0."""

    @staticmethod
    def forward(ctx, values: torch.Tensor, offsets: torch.Tensor, max_len: int) -> torch.Tensor:
        ctx.save_for_backward(offsets)
        ctx.total = values.shape[0]
        return torch.ops.aten._jagged_to_padded_dense_forward(values, [offsets], [max_len], 0.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (offsets,) = ctx.saved_tensors
        b, max_len = grad.shape[0], grad.shape[1]
        pos = torch.arange(ctx.total, device=grad.device)
        bag = (torch.searchsorted(offsets[1:], pos, right=True)).clamp(max=max(b - 1, 0))
        j = pos - offsets[bag]
        keep = (j < max_len).to(grad.dtype)[:, None]
        return grad[bag, j.clamp(max=max_len - 1)] * keep, None, None


class SeqRec(nn.Module):
    """Jagged user histories of hashed item ids: embedded, padded (jagged→padded) for a causal-free
    attention pooling, segment-summed (segment_reduce), and bag-pooled (embedding_bag mean); dense
    features bucketized (bucketize) and embedded; a candidate item scored by an MLP."""

    PRIME = 1_000_003

    def __init__(self, buckets: int, dim: int, max_len: int, dense_in: int, n_bounds: int, hidden: int) -> None:
        super().__init__()
        self.buckets, self.max_len = buckets, max_len
        self.items = nn.Embedding(buckets, dim)
        self.bag = nn.EmbeddingBag(buckets, dim, mode="mean")
        self.register_buffer("bounds", torch.linspace(-2.0, 2.0, n_bounds))
        self.dense_emb = nn.Embedding(n_bounds + 1, dim)
        self.query = nn.Linear(dim, dim)
        self.mlp = _mlp([4 * dim + dense_in * dim, hidden, 1], last_act=False)

    def forward(self, hist_ids, offsets, lengths, dense, cand_ids):
        h = (hist_ids * self.PRIME) % self.buckets  # hashed ids
        emb = self.items(h)  # [T, D] jagged values
        padded = _JaggedToPadded.apply(emb, offsets, self.max_len)  # [B, L, D]: _jagged_to_padded_dense_forward
        pooled = torch.segment_reduce(emb, "sum", lengths=lengths, unsafe=True)  # [B, D]
        bagged = self.bag(h, offsets[:-1])  # [B, D]
        cand = self.items((cand_ids * self.PRIME) % self.buckets)  # [B, D]
        pos = torch.arange(self.max_len, device=lengths.device)
        mask = pos[None, :] < lengths[:, None]
        scores = torch.einsum("bld,bd->bl", padded, self.query(cand)).masked_fill(~mask, float("-inf"))
        w = torch.nan_to_num(torch.softmax(scores, dim=1))  # empty histories -> zeros
        attn = torch.einsum("bl,bld->bd", w, padded)
        dfeat = self.dense_emb(torch.bucketize(dense, self.bounds)).flatten(1)  # bucketized dense features
        x = torch.cat([attn, pooled, bagged, cand, dfeat], dim=1)
        return torch.sigmoid(self.mlp(x))


def make_seqrec(size: str = "small", device: str = "cpu", seed: int = 0):
    _check(size)
    if size == "small":
        buckets, dim, max_len, dense_in, n_bounds, hidden, batch, avg = 64, 8, 8, 3, 7, 16, 8, 4
    else:
        buckets, dim, max_len, dense_in, n_bounds, hidden, batch, avg = 2_000_000, 128, 256, 16, 255, 512, 4096, 128
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    with torch.device(device):  # built in place: the large tables never touch host memory
        model = SeqRec(buckets, dim, max_len, dense_in, n_bounds, hidden).eval()
    lengths = torch.randint(0, 2 * avg + 1, (batch,), generator=g)
    lengths[0] = 0  # an empty history is always there
    lengths[-1] = 2 * max_len if size == "small" else lengths[-1]  # one history longer than max_len (truncated)
    offsets = torch.zeros(batch + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(lengths, 0)
    hist = torch.randint(0, 10 * buckets, (int(offsets[-1]),), generator=g)
    dense = torch.randn(batch, dense_in, generator=g)
    cand = torch.randint(0, 10 * buckets, (batch,), generator=g)
    return model, tuple(t.to(device) for t in (hist, offsets, lengths, dense, cand))


# -- (c) HSTU-style block --------------------------------------------------------------------------
class HSTUBlock(nn.Module):
    """One HSTU layer (generative recommenders) in plain ops: U, V, Q, K = split(silu(W x));
    A = silu(Q Kᵀ + rel_bias) / N, causal; out = W_o(norm(A V) * U) + x. The attention is one region
    of the hstu_attention family (served on CUDA, where regions are contested)."""

    def __init__(self, dim: int, heads: int, seq: int) -> None:
        super().__init__()
        self.heads, self.dh = heads, dim // heads
        self.norm_in = nn.LayerNorm(dim)
        self.uvqk = nn.Linear(dim, 4 * dim)
        self.rel_bias = nn.Parameter(0.02 * torch.randn(heads, seq, seq))
        self.norm_out = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, dim)
        self.register_buffer("causal", torch.ones(seq, seq, dtype=torch.bool).tril(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        u, v, q, k = F.silu(self.uvqk(self.norm_in(x))).chunk(4, dim=-1)
        q, k, v = (t.view(b, n, self.heads, self.dh).transpose(1, 2) for t in (q, k, v))
        a = F.silu(q @ k.transpose(-1, -2) + self.rel_bias[:, :n, :n]) / n
        a = a.masked_fill(~self.causal[:n, :n], 0.0)
        o = (a @ v).transpose(1, 2).reshape(b, n, d)
        return x + self.out(self.norm_out(o) * u)


def make_hstu(size: str = "small", device: str = "cpu", seed: int = 0):
    _check(size)
    batch, seq, dim, heads = (2, 16, 16, 2) if size == "small" else (64, 1024, 512, 8)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    # large: bf16, as generative recommenders run it (fp32 attention would be bound by fp32 matmuls)
    dtype = torch.float32 if size == "small" else torch.bfloat16
    with torch.device(device):  # built in place: the large tables never touch host memory
        model = HSTUBlock(dim, heads, seq).eval().to(dtype)
    return model, (torch.randn(batch, seq, dim, generator=g).to(device, dtype),)


# -- (d) a small transformer with a long-tail op ------------------------------------------------------
class TinyTransformer(nn.Module):
    """Token + position embeddings, one pre-norm attention block, then a running max over positions
    (``torch.cummax``: "the strongest signal so far", a long-tail op) before the head."""

    def __init__(self, vocab: int, dim: int, heads: int, seq: int) -> None:
        super().__init__()
        self.heads = heads
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(0.02 * torch.randn(seq, dim))
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = _mlp([dim, 4 * dim, dim], last_act=False)
        self.head = nn.Linear(2 * dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n = tokens.shape
        x = self.tok(tokens) + self.pos[:n]
        q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, n, -1))
        x = x + self.ff(self.ln2(x))
        running = torch.cummax(x, dim=1).values  # long-tail op
        return self.head(torch.cat([x, running], dim=-1))


def make_transformer(size: str = "small", device: str = "cpu", seed: int = 0):
    _check(size)
    vocab, dim, heads, batch, seq = (50, 16, 2, 2, 8) if size == "small" else (32000, 768, 12, 16, 1024)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    with torch.device(device):  # built in place: the large tables never touch host memory
        model = TinyTransformer(vocab, dim, heads, seq).eval()
    return model, (torch.randint(0, vocab, (batch, seq), generator=g).to(device),)


# -- (e) a user custom_op with only a CPU implementation ------------------------------------------------
@torch.library.custom_op("kevolve_zoo::soft_clip_log1p", mutates_args=(), device_types="cpu")
def soft_clip_log1p(x: torch.Tensor, limit: float) -> torch.Tensor:
    """A user's op with a CPU body only: sign(x) * log1p(min(|x|, limit))."""
    return torch.sign(x) * torch.log1p(x.abs().clamp_max(limit))


@soft_clip_log1p.register_fake
def _(x: torch.Tensor, limit: float) -> torch.Tensor:
    return torch.empty_like(x)


class CustomOpModel(nn.Module):
    """Linear → the user's CPU-only op → linear. On a GPU the op has no kernel: with ``host_roundtrip``
    (what ``make_custom_op`` sets off the CPU) its input goes to the host and back, as a user's model
    would have to; without it only a kernel kevolve found (generic family, LLM) can run it there."""

    def __init__(self, din: int, hidden: int, host_roundtrip: bool = False) -> None:
        super().__init__()
        self.host_roundtrip = host_roundtrip
        self.inp = nn.Linear(din, hidden)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        if self.host_roundtrip:
            return self.out(soft_clip_log1p(h.cpu(), 3.0).to(h.device))
        return self.out(soft_clip_log1p(h, 3.0))


def make_custom_op(size: str = "small", device: str = "cpu", seed: int = 0):
    _check(size)
    batch, din, hidden = (8, 4, 16) if size == "small" else (65536, 256, 1024)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    with torch.device(device):  # built in place: the large tables never touch host memory
        model = CustomOpModel(din, hidden, host_roundtrip=torch.device(device).type not in ("cpu", "meta")).eval()
    return model, (torch.randn(batch, din, generator=g).to(device),)
