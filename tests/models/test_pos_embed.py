"""Fixed 2-D sin-cos position embeddings and their bicubic interpolation.

Expected tables are built here by hand from the formula (plain ``math``): the official
layout puts the column index in the first half of the channels and the row index in the second.
"""

from __future__ import annotations

import math

import pytest
import torch

from maekit.models.pos_embed import interpolate_pos_embed, sincos_2d


def _hand_table(dim: int, gh: int, gw: int, cls_token: bool) -> torch.Tensor:
    """Row-major over (row, col); first half encodes the column, second half the row."""
    quarter = dim // 4
    omega = [1.0 / 10000 ** (k / quarter) for k in range(quarter)]
    rows = []
    if cls_token:
        rows.append([0.0] * dim)
    for r in range(gh):
        for c in range(gw):
            col_half = [math.sin(c * w) for w in omega] + [math.cos(c * w) for w in omega]
            row_half = [math.sin(r * w) for w in omega] + [math.cos(r * w) for w in omega]
            rows.append(col_half + row_half)
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("dim, grid", [(8, (2, 3)), (8, (3, 3)), (8, (3, 2)), (16, (4, 5))])
@pytest.mark.parametrize("cls_token", [True, False])
def test_sincos_2d_matches_hand_computed_formula(dim, grid, cls_token):
    gh, gw = grid
    out = sincos_2d(dim, grid, cls_token=cls_token)
    assert out.dtype == torch.float32
    assert out.shape == (gh * gw + int(cls_token), dim)
    expected = _hand_table(dim, gh, gw, cls_token)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-7)


def test_sincos_2d_int_grid_equals_square_tuple():
    assert torch.equal(sincos_2d(8, 3, cls_token=True), sincos_2d(8, (3, 3), cls_token=True))


def test_sincos_2d_explicit_values_d8_grid_2x3():
    """A few entries spelled out: D=8 -> omega = (1, 1/100) for each half."""
    t = sincos_2d(8, (2, 3), cls_token=True)
    assert torch.count_nonzero(t[0]) == 0  # cls row is zeros
    # token for (row 1, col 2) is at 1 + 1*3 + 2 = 6
    row, col = 1, 2
    expected = [
        math.sin(col),
        math.sin(col / 100),
        math.cos(col),
        math.cos(col / 100),
        math.sin(row),
        math.sin(row / 100),
        math.cos(row),
        math.cos(row / 100),
    ]
    torch.testing.assert_close(t[6], torch.tensor(expected, dtype=torch.float32))
    # (row 0, col 0): sin = 0, cos = 1 in both halves
    assert t[1].tolist() == [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]
    # the column half changes along a row, the row half does not (and vice versa)
    assert torch.equal(t[1 + 0 * 3 + 1, 4:], t[1 + 0 * 3 + 0, 4:])
    assert not torch.equal(t[1 + 0 * 3 + 1, :4], t[1 + 0 * 3 + 0, :4])
    assert torch.equal(t[1 + 1 * 3 + 0, :4], t[1 + 0 * 3 + 0, :4])
    assert not torch.equal(t[1 + 1 * 3 + 0, 4:], t[1 + 0 * 3 + 0, 4:])


@pytest.mark.parametrize("dim, size", [(64, 4), (768, 14), (512, 14)])
def test_sincos_2d_real_sizes_match_formula(dim, size):
    expected = _hand_table(dim, size, size, cls_token=True).float()
    torch.testing.assert_close(sincos_2d(dim, size, cls_token=True), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dim", [6, 10, 3])
def test_sincos_2d_rejects_dim_not_multiple_of_4(dim):
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(dim, 2)


# ---------------------------------------------------------------------------------------------
# interpolate_pos_embed
# ---------------------------------------------------------------------------------------------


def test_interpolate_identity_at_same_size():
    pe = torch.randn(1, 1 + 14 * 14, 32, generator=torch.Generator().manual_seed(0))
    out = interpolate_pos_embed(pe, (14, 14))
    assert torch.equal(out, pe)


def test_interpolate_14_to_16_keeps_cls_row_and_changes_shape():
    pe = torch.randn(1, 1 + 14 * 14, 32, generator=torch.Generator().manual_seed(1))
    out = interpolate_pos_embed(pe, (16, 16))
    assert out.shape == (1, 1 + 16 * 16, 32)
    assert out.dtype == pe.dtype
    assert torch.equal(out[:, 0], pe[:, 0])
    assert not torch.equal(out[:, 1:5], pe[:, 1:5])


def test_interpolate_keeps_several_extra_tokens():
    pe = torch.randn(1, 2 + 4 * 4, 8, generator=torch.Generator().manual_seed(2))
    out = interpolate_pos_embed(pe, (6, 6), num_extra_tokens=2)
    assert out.shape == (1, 2 + 36, 8)
    assert torch.equal(out[:, :2], pe[:, :2])


def test_interpolate_constant_grid_stays_constant():
    dim = 12
    values = torch.linspace(-2.0, 3.0, dim)
    pe = torch.cat([torch.full((1, 1, dim), 7.0), values.expand(1, 14 * 14, dim)], dim=1)
    out = interpolate_pos_embed(pe, (16, 16))
    assert out.shape == (1, 1 + 256, dim)
    torch.testing.assert_close(out[0, 1:], values.expand(256, dim), rtol=0, atol=1e-5)
    assert torch.equal(out[0, 0], torch.full((dim,), 7.0))


def test_interpolate_respects_row_major_layout():
    """A table that varies only with the row index must still vary only with the row."""
    old, new, dim = 4, 7, 3
    rows = torch.arange(old, dtype=torch.float32)[:, None].expand(old, old).reshape(-1)
    pe = torch.cat([torch.zeros(1, 1, dim), rows[None, :, None].expand(1, -1, dim)], dim=1)
    out = interpolate_pos_embed(pe, (new, new))[0, 1:, 0].reshape(new, new)
    # constant along each row (columns identical) ...
    torch.testing.assert_close(out, out[:, :1].expand(new, new), rtol=0, atol=1e-5)
    # ... and increasing down the rows, from about 0 to about old - 1
    assert torch.all(out[1:, 0] > out[:-1, 0])
    assert out[0, 0] < 0.5 and out[-1, 0] > old - 1.5


def test_interpolate_non_square_target_and_fp16_dtype_kept():
    pe = torch.randn(1, 1 + 9, 8, generator=torch.Generator().manual_seed(3)).half()
    out = interpolate_pos_embed(pe, (2, 5))
    assert out.shape == (1, 1 + 10, 8)
    assert out.dtype == torch.float16


def test_interpolate_rejects_non_square_source():
    with pytest.raises(ValueError, match="square"):
        interpolate_pos_embed(torch.zeros(1, 1 + 12, 8), (4, 4))
