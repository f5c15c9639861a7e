"""Random per-sample masking and (un)patchify: pure tensor functions.

Semantics follow the official MAE exactly: small noise = keep; ``mask`` is 0 for
kept and 1 for removed patches, in the original patch order.
"""

from __future__ import annotations

import torch


def random_masking(
    x: torch.Tensor, mask_ratio: float, noise: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep ``int(L * (1 - mask_ratio))`` tokens of each sample.

    x: (N, L, D); noise: optional (N, L) in any range (argsort is all that matters).
    Returns (x_kept (N, K, D), mask (N, L), ids_restore (N, L)).
    """
    n, length, dim = x.shape
    ids_keep, mask, ids_restore = draw_mask(n, length, mask_ratio, noise, x.device)
    x_kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))  # (N, K, D)
    return x_kept, mask, ids_restore


def draw_mask(
    n: int,
    length: int,
    mask_ratio: float,
    noise: torch.Tensor | None = None,
    device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The mask alone, before any token exists (ConvMAE masks its conv stages with it).

    Returns (ids_keep (N, K), mask (N, L), ids_restore (N, L)); the same draw as
    :func:`random_masking` for the same ``noise`` (or the same global RNG state).
    """
    len_keep = int(length * (1 - mask_ratio))
    if noise is None:
        noise = torch.rand(n, length, device=device)
    elif noise.shape != (n, length):
        raise ValueError(f"noise must have shape {(n, length)}, got {tuple(noise.shape)}")
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    mask = torch.ones(n, length, device=noise.device)  # float32 whatever the compute dtype
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)  # back to original patch order
    return ids_keep, mask, ids_restore


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, h*w, p*p*C), each patch flattened as (p, q, c), channel fastest."""
    n, c, h_px, w_px = imgs.shape
    p = patch_size
    if h_px % p or w_px % p:
        raise ValueError(f"image size {h_px}x{w_px} is not divisible by patch size {p}")
    h, w = h_px // p, w_px // p
    x = imgs.reshape(n, c, h, p, w, p)
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, h * w, p * p * c)


def unpatchify(
    x: torch.Tensor, patch_size: int, grid: tuple[int, int] | None = None, in_chans: int = 3
) -> torch.Tensor:
    """(N, h*w, p*p*C) -> (N, C, H, W); inverse of :func:`patchify`. Square grid unless given."""
    n, length, _ = x.shape
    p = patch_size
    if grid is None:
        h = w = int(length**0.5)
        if h * w != length:
            raise ValueError(f"{length} patches do not form a square grid; pass grid=(h, w)")
    else:
        h, w = grid
    x = x.reshape(n, h, w, p, p, in_chans)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(n, in_chans, h * p, w * p)


def upsample_mask(mask: torch.Tensor, grid: tuple[int, int], factor: int) -> torch.Tensor:
    """(N, h*w) token mask -> (N, h*f, w*f): each token's value fills its f x f block.

    ConvMAE draws one mask on the token grid and applies it to its finer conv stages, where
    token (i, j) covers the cells (i*f .. i*f+f-1, j*f .. j*f+f-1).
    """
    h, w = grid
    m = mask.reshape(mask.shape[0], h, w)
    return m.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)
