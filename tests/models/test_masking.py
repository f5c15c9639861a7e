"""Random per-sample masking and (un)patchify, checked against the MAE recipe.

Recipe facts: noise (N, L); ids_shuffle = argsort(noise) ascending (small = keep);
ids_restore = argsort(ids_shuffle); keep int(L * (1 - mask_ratio)); mask is 0 for kept,
1 for removed, in the original patch order. Patch vectors are (p, q, c), channel fastest.
"""

from __future__ import annotations

import pytest
import torch

from maekit.models.masking import patchify, random_masking, unpatchify


def _distinct_noise(n: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """Noise with no ties inside a sample, so the kept set is uniquely defined."""
    return torch.stack([torch.randperm(length, generator=gen) for _ in range(n)]).float() / length


# ---------------------------------------------------------------------------------------------
# random_masking
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 4, 10, 49, 196])
@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.6, 0.75, 0.9])
def test_keep_count_is_int_of_l_times_one_minus_ratio(length, ratio):
    gen = torch.Generator().manual_seed(1000 * length + int(100 * ratio))
    n, dim = 3, 5
    x = torch.randn(n, length, dim, generator=gen)
    noise = torch.rand(n, length, generator=gen)
    x_kept, mask, ids_restore = random_masking(x, ratio, noise)

    len_keep = int(length * (1 - ratio))
    assert x_kept.shape == (n, len_keep, dim)
    assert mask.shape == (n, length)
    assert ids_restore.shape == (n, length)
    # exactly len_keep zeros and L - len_keep ones per sample, nothing else
    assert torch.all((mask == 0) | (mask == 1))
    assert mask.sum(dim=1).tolist() == [float(length - len_keep)] * n


def test_ratio_zero_keeps_everything_in_noise_order():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 4, generator=gen)
    noise = _distinct_noise(2, 16, gen)
    x_kept, mask, _ = random_masking(x, 0.0, noise)
    assert torch.count_nonzero(mask) == 0
    order = torch.argsort(noise, dim=1)
    assert torch.equal(x_kept, torch.gather(x, 1, order[..., None].expand(-1, -1, 4)))


def test_ids_restore_inverts_ids_shuffle():
    gen = torch.Generator().manual_seed(1)
    n, length, dim = 4, 20, 3
    x = torch.randn(n, length, dim, generator=gen)
    noise = _distinct_noise(n, length, gen)
    _, _, ids_restore = random_masking(x, 0.75, noise)

    ids_shuffle = torch.argsort(noise, dim=1)
    # ids_restore is a permutation of 0..L-1 per sample ...
    assert torch.equal(torch.sort(ids_restore, dim=1).values, torch.arange(length).expand(n, -1))
    # ... and the inverse of ids_shuffle: ids_restore[ids_shuffle[k]] == k
    assert torch.equal(
        torch.gather(ids_restore, 1, ids_shuffle), torch.arange(length).expand(n, -1)
    )
    # gathering the shuffled sequence with ids_restore gives the original order back
    x_shuffled = torch.gather(x, 1, ids_shuffle[..., None].expand(-1, -1, dim))
    assert not torch.equal(x_shuffled, x)
    x_back = torch.gather(x_shuffled, 1, ids_restore[..., None].expand(-1, -1, dim))
    assert torch.equal(x_back, x)


def test_decoder_style_unshuffle_puts_kept_tokens_back_where_mask_is_zero():
    """cat(kept, fillers) gathered with ids_restore: kept tokens land at mask == 0 positions."""
    gen = torch.Generator().manual_seed(2)
    n, length, dim = 3, 12, 2
    x = torch.randn(n, length, dim, generator=gen)
    noise = _distinct_noise(n, length, gen)
    x_kept, mask, ids_restore = random_masking(x, 0.5, noise)
    fillers = torch.full((n, length - x_kept.shape[1], dim), float("nan"))
    full = torch.gather(
        torch.cat([x_kept, fillers], dim=1), 1, ids_restore[..., None].expand(-1, -1, dim)
    )
    kept = mask == 0
    assert torch.equal(full[kept], x[kept])
    assert torch.isnan(full[~kept]).all()


def test_mask_matches_the_smallest_noise_values():
    gen = torch.Generator().manual_seed(3)
    n, length, dim = 5, 30, 4
    x = torch.randn(n, length, dim, generator=gen)
    noise = torch.randn(n, length, generator=gen) * 7 - 3  # any range: only the order matters
    ratio = 0.7
    x_kept, mask, _ = random_masking(x, ratio, noise)
    len_keep = int(length * (1 - ratio))

    for i in range(n):
        smallest = torch.topk(noise[i], len_keep, largest=False).indices
        expected = torch.ones(length)
        expected[smallest] = 0.0
        assert torch.equal(mask[i], expected)
        # kept tokens are x at those indices, in ascending-noise order
        order = smallest[torch.argsort(noise[i, smallest])]
        assert torch.equal(x_kept[i], x[i, order])


def test_masks_differ_per_sample_with_different_noise():
    x = torch.zeros(2, 8, 1)
    noise = torch.stack([torch.arange(8.0), torch.arange(8.0).flip(0)])
    _, mask, _ = random_masking(x, 0.5, noise)
    assert mask[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert mask[1].tolist() == [1, 1, 1, 1, 0, 0, 0, 0]


@pytest.mark.parametrize("bad_shape", [(2, 11), (2, 9), (3, 10), (10,), (2, 10, 1)])
def test_bad_noise_shape_raises_value_error(bad_shape):
    x = torch.randn(2, 10, 4)
    with pytest.raises(ValueError, match="noise"):
        random_masking(x, 0.5, torch.rand(*bad_shape))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_mask_is_float32_whatever_the_input_dtype(dtype):
    x = torch.randn(2, 10, 4).to(dtype)
    x_kept, mask, ids_restore = random_masking(x, 0.5, torch.rand(2, 10))
    assert mask.dtype == torch.float32
    assert x_kept.dtype == dtype
    assert ids_restore.dtype == torch.int64


def test_without_noise_uses_the_global_rng():
    x = torch.randn(4, 16, 3)
    torch.manual_seed(123)
    a = random_masking(x, 0.75)
    torch.manual_seed(123)
    b = random_masking(x, 0.75)
    for ta, tb in zip(a, b, strict=True):
        assert torch.equal(ta, tb)
    assert a[0].shape == (4, 4, 3)
    assert a[1].sum().item() == 4 * 12
    torch.manual_seed(124)
    c = random_masking(x, 0.75)
    assert not torch.equal(a[1], c[1])


# ---------------------------------------------------------------------------------------------
# patchify / unpatchify
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chans", [1, 3])
@pytest.mark.parametrize("p, size", [(4, 8), (2, 6), (16, 32)])
def test_square_round_trip(chans, p, size):
    gen = torch.Generator().manual_seed(p * 100 + size + chans)
    imgs = torch.randn(2, chans, size, size, generator=gen)
    x = patchify(imgs, p)
    assert x.shape == (2, (size // p) ** 2, p * p * chans)
    assert torch.equal(unpatchify(x, p, in_chans=chans), imgs)


@pytest.mark.parametrize("chans", [1, 3])
def test_non_square_round_trip_with_explicit_grid(chans):
    gen = torch.Generator().manual_seed(chans)
    p, gh, gw = 4, 2, 3
    imgs = torch.randn(2, chans, gh * p, gw * p, generator=gen)
    x = patchify(imgs, p)
    assert x.shape == (2, gh * gw, p * p * chans)
    back = unpatchify(x, p, grid=(gh, gw), in_chans=chans)
    assert back.shape == imgs.shape
    assert torch.equal(back, imgs)


def test_non_square_grid_without_grid_argument_raises():
    x = patchify(torch.randn(1, 3, 8, 12), 4)  # 6 patches
    with pytest.raises(ValueError, match="grid"):
        unpatchify(x, 4)


@pytest.mark.parametrize("chans, h, w", [(3, 8, 12), (1, 12, 8), (2, 4, 4)])
def test_patch_vector_order_is_p_q_c_with_channel_fastest(chans, h, w):
    p = 2
    imgs = torch.arange(2 * chans * h * w, dtype=torch.float32).reshape(2, chans, h, w)
    x = patchify(imgs, p)
    gh, gw = h // p, w // p
    for n in range(2):
        for i in range(gh):
            for j in range(gw):
                for u in range(p):
                    for v in range(p):
                        for c in range(chans):
                            assert (
                                x[n, i * gw + j, (u * p + v) * chans + c]
                                == imgs[n, c, i * p + u, j * p + v]
                            )


def test_patch_order_single_explicit_element():
    """Patch (1, 2), row u=3, col v=1, channel 2 of a 3-channel 16x24 image with p=4."""
    imgs = torch.randn(2, 3, 16, 24, generator=torch.Generator().manual_seed(9))
    x = patchify(imgs, 4)
    i, j, u, v, c, p, chans, gw = 1, 2, 3, 1, 2, 4, 3, 6
    assert x[1, i * gw + j, (u * p + v) * chans + c] == imgs[1, c, i * p + u, j * p + v]
    # and it is not the channel-slowest (c, p, q) layout
    assert x[1, i * gw + j, c * p * p + u * p + v] != imgs[1, c, i * p + u, j * p + v]


@pytest.mark.parametrize("h, w", [(10, 8), (8, 10), (9, 9)])
def test_non_divisible_size_raises(h, w):
    with pytest.raises(ValueError, match="divisible"):
        patchify(torch.randn(1, 3, h, w), 4)
