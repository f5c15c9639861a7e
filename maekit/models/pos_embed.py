"""Fixed 2-D sine-cosine position embeddings, as used by MAE and ConvMAE.

The table is computed in float64 with NumPy-equivalent arithmetic so that it is
bit-identical to the official one. One quirk is kept on purpose: the official
code builds the grid with ``meshgrid(w, h)`` and then encodes ``grid[0]`` (the
*column* index) in the first half of the channels and ``grid[1]`` (the row
index) in the second half. Checkpoints depend on this layout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def sincos_1d(embed_dim: int, positions: torch.Tensor) -> torch.Tensor:
    """(M,) positions -> (M, embed_dim): [sin(pos * w_k), cos(pos * w_k)], w_k = 1/10000^(2k/D)."""
    if embed_dim % 2:
        raise ValueError(f"embed_dim must be even for sin-cos embeddings, got {embed_dim}")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000**omega  # (D/2,)
    out = positions.reshape(-1).to(torch.float64)[:, None] * omega[None, :]  # (M, D/2)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)  # (M, D)


def sincos_2d(
    embed_dim: int, grid_size: int | tuple[int, int], cls_token: bool = False
) -> torch.Tensor:
    """2-D sin-cos table of shape (gh*gw [+1], embed_dim), float32, row-major over the grid.

    With ``cls_token`` a zero row is prepended for the class-token slot.
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim must be divisible by 4 for 2-D sin-cos, got {embed_dim}")
    gh, gw = (grid_size, grid_size) if isinstance(grid_size, int) else grid_size
    rows = torch.arange(gh, dtype=torch.float64)[:, None].expand(gh, gw)  # (gh, gw)
    cols = torch.arange(gw, dtype=torch.float64)[None, :].expand(gh, gw)  # (gh, gw)
    # First half encodes the column index, second half the row index (official layout).
    emb = torch.cat([sincos_1d(embed_dim // 2, cols), sincos_1d(embed_dim // 2, rows)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, embed_dim, dtype=torch.float64), emb], dim=0)
    return emb.float()


def interpolate_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: tuple[int, int],
    num_extra_tokens: int = 1,
    old_grid: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Resize a learned/fixed (1, extra + gh*gw, D) table to ``new_grid`` bicubically.

    Extra tokens (cls) are kept unchanged in front; the identity at the same size. The old
    grid is square unless ``old_grid`` (rows, columns) says otherwise.
    """
    extra = pos_embed[:, :num_extra_tokens]
    grid = pos_embed[:, num_extra_tokens:]
    n_old = grid.shape[1]
    if old_grid is None:
        side = int(math.isqrt(n_old))
        if side * side != n_old:
            raise ValueError(
                f"pos_embed grid of {n_old} tokens is not square; its (rows, columns) are needed"
            )
        old_grid = (side, side)
    old_h, old_w = old_grid
    if old_h * old_w != n_old:
        raise ValueError(f"pos_embed has {n_old} grid tokens, not {old_h}x{old_w}")
    if (old_h, old_w) == tuple(new_grid):
        return pos_embed
    dim = grid.shape[-1]
    grid = grid.reshape(1, old_h, old_w, dim).permute(0, 3, 1, 2)  # (1, D, h, w)
    grid = F.interpolate(grid.float(), size=tuple(new_grid), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos_embed.dtype)
    return torch.cat([extra, grid], dim=1)
