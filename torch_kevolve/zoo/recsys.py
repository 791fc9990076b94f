"""A small recommendation-style model: pooled sparse features (embedding bags) + dense MLP."""
from __future__ import annotations

import torch
from torch import nn


class EmbeddingBagMLP(nn.Module):
    """Three sparse features pooled three ways (sum, mean, weighted sum) then an MLP over the
    concatenation with the dense features — the shape of DLRM's bottom half."""

    def __init__(self, num_rows: int = 1000, dim: int = 16, dense_in: int = 8, hidden: int = 32) -> None:
        super().__init__()
        self.user = nn.EmbeddingBag(num_rows, dim, mode="sum")
        self.item = nn.EmbeddingBag(num_rows, dim, mode="mean")
        self.ctx = nn.EmbeddingBag(num_rows, dim, mode="sum", include_last_offset=True)
        self.mlp = nn.Sequential(nn.Linear(3 * dim + dense_in, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, dense, u_idx, u_off, i_idx, i_off, c_idx, c_off, c_w):
        pooled = [self.user(u_idx, u_off), self.item(i_idx, i_off), self.ctx(c_idx, c_off, per_sample_weights=c_w)]
        return torch.sigmoid(self.mlp(torch.cat([*pooled, dense], dim=1)))


def _bags(batch: int, pooling: int, num_rows: int, g: torch.Generator, device: str, last: bool = False):
    lengths = torch.randint(0, 2 * pooling + 1, (batch,), generator=g)
    lengths[0] = 0  # an empty bag is always part of the demo
    offsets = torch.zeros(batch + (1 if last else 0), dtype=torch.int64)
    offsets[1:batch] = torch.cumsum(lengths, 0)[:-1]
    if last:
        offsets[batch] = lengths.sum()
    idx = torch.randint(0, num_rows, (int(lengths.sum()),), generator=g)
    return idx.to(device), offsets.to(device)


def make_embedding_bag_mlp(size: str = "small", device: str = "cpu", seed: int = 0):
    """(model, inputs). "small" runs in seconds on the CPU interpreter; "large" is GPU-sized."""
    g = torch.Generator().manual_seed(seed)
    if size == "small":
        rows, dim, batch, pooling = 1000, 16, 64, 4
    else:
        rows, dim, batch, pooling = 1_000_000, 128, 16384, 20
    torch.manual_seed(seed)
    model = EmbeddingBagMLP(rows, dim).to(device).eval()
    dense = torch.randn(batch, 8, generator=g).to(device)
    u = _bags(batch, pooling, rows, g, device)
    i = _bags(batch, pooling, rows, g, device)
    c_idx, c_off = _bags(batch, pooling, rows, g, device, last=True)
    c_w = torch.rand(c_idx.shape[0], generator=g).to(device)
    return model, (dense, *u, *i, c_idx, c_off, c_w)
