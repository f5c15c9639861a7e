"""ConvViT: the ConvMAE encoder (Gao et al. 2022), and its fine-tune / linear-probe model.

Three stages. Stages 1 and 2 are convolutional: a non-overlapping patch-embed conv
(+ LayerNorm + GELU) followed by conv blocks, each ``x + conv2(dwconv5x5(conv1(LN(x))))``
then ``x + mlp(LN(x))`` with 1x1 convs. Stage 3 embeds once more, projects with a Linear
(``patch_embed4``), adds a position embedding and runs plain transformer blocks on the
token grid. Parameter names and shapes equal the official ConvMAE's, so checkpoints
interchange; LayerNorms in conv blocks and patch embeds use torch's default eps 1e-5,
the transformer parts 1e-6, as the official.

Strides: ``patch_size`` P is the overall stride (the size of one token's pixel patch, as
for a ViT). The stages downsample by (P/4, 2, 2): the official P = 16 gives 4, 2, 2 and
56x56 / 28x28 / 14x14 grids at 224 px; P = 4 (28-32 px images) gives 1, 2, 2. The
stage-1 and stage-2 grids are therefore always 4x and 2x the token grid, so ConvMAE's mask
upsampling and its 4x4 / 2x2 multi-scale decode convs keep their official shapes. Grids
are derived from ``img_size``: any size divisible by P works.

Layout: stages 1-2 keep activations channels-last, (N, H, W, C). The LayerNorms and the
1x1 convs then act on the last dim directly (a 1x1 conv is a Linear over channels), with no
NCHW <-> NHWC permute-and-copy around every LayerNorm as in the official code; only the
depthwise and patch-embed convs see an NCHW *view* of the same memory (channels_last
strides, which torch's CPU and CUDA convs take natively). Numbers are the official
formulation's: tests compare against it in float64. BENCHMARKS.md has the timing (on the
project's CPU, no measurable difference either way).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, to_2tuple, trunc_normal_
from timm.models.vision_transformer import Block

from ..errors import MaekitError
from .decoder import DECODER_PATTERNS, run_checkpointed
from .family import HEAD_PATTERNS
from .masking import upsample_mask


def stage_strides(patch_size: int) -> tuple[int, int, int]:
    """Overall stride P -> the three stage strides (P/4, 2, 2); P must be a multiple of 4."""
    if patch_size <= 0 or patch_size % 4:
        raise MaekitError(
            f"a ConvViT's patch size is its overall stride, split as (P/4, 2, 2) over its three "
            f"stages, so it must be a multiple of 4; got {patch_size} (use e.g. 4, 8 or 16)"
        )
    return patch_size // 4, 2, 2


def _nchw(x: torch.Tensor) -> torch.Tensor:
    """(N, H, W, C) -> an (N, C, H, W) view of the same memory (channels_last strides)."""
    return x.permute(0, 3, 1, 2)


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, H, W, C) view; contiguous when ``x`` has channels_last strides."""
    return x.permute(0, 2, 3, 1)


class PointwiseConv(nn.Conv2d):
    """A 1x1 convolution applied to channels-last input as a Linear over the last dim.

    Still a Conv2d, so its weight keeps the official (out, in, 1, 1) shape and init.
    """

    def __init__(self, in_chans: int, out_chans: int) -> None:
        super().__init__(in_chans, out_chans, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        return F.linear(x, self.weight.flatten(1), self.bias)


class ConvMlp(nn.Module):
    """The conv blocks' MLP: 1x1 conv -> GELU -> 1x1 conv (``mlp.fc1``, ``mlp.fc2``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = PointwiseConv(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = PointwiseConv(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, H, W, C)
        return self.fc2(self.act(self.fc1(x)))


class ConvPatchEmbed(nn.Module):
    """Non-overlapping k x k conv with stride k -> LayerNorm (eps 1e-5) -> GELU."""

    def __init__(self, in_chans: int, embed_dim: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=stride, stride=stride)
        self.norm = nn.LayerNorm(embed_dim)  # torch default eps 1e-5, as the official
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, H, W, C) -> (N, H/k, W/k, D)
        return self.act(self.norm(_nhwc(self.proj(_nchw(x)))))


@dataclass(frozen=True)
class VisibleCells:
    """Where the visible tokens' cells sit, for conv stages computed at those cells only.

    Such a stage holds its activations token by token, (N*K, f, f, C): row n*K + k is the f x f
    block of cells of token ``ids_keep[n, k]`` (f = 4 in stage 1, 2 in stage 2). Everything in a
    conv block but the depthwise conv acts per cell, so it runs on these rows as they are; the
    depthwise conv (:meth:`depthwise`) is the one operation that reads neighbours.
    """

    ids_keep: torch.Tensor  # (N, K) visible token indices
    grid: tuple[int, int]  # the token grid (h, w)

    def depthwise(self, conv: nn.Conv2d, y: torch.Tensor) -> torch.Tensor:
        """``conv`` (stride 1, 'same' padding) at the visible cells of ``y`` (N*K, f, f, C).

        Its input is the whole grid with zeros at the masked cells, which is exactly what the
        masked dense path feeds it (it zeroes masked cells before this conv); the conv runs on
        the grid (a depthwise conv is ~1 % of a block's FLOPs) and only visible outputs are
        kept.
        """
        n, k = self.ids_keep.shape
        h, w = self.grid
        f, c = y.shape[1], y.shape[-1]
        base = torch.arange(n, device=y.device).unsqueeze(1) * (h * w)
        rows = (base + self.ids_keep).flatten()  # (N*K,) rows of the token-major grid
        grid = y.new_zeros(n * h * w, f, f, c).index_copy(0, rows, y)  # zeros at masked cells
        # token-major (N, h, w, f, f, C) -> the image (N, h*f, w*f, C)
        grid = grid.view(n, h, w, f, f, c).permute(0, 1, 3, 2, 4, 5).reshape(n, h * f, w * f, c)
        out = _nhwc(conv(_nchw(grid))).reshape(n, h, f, w, f, c).permute(0, 1, 3, 2, 4, 5)
        batch = torch.arange(n, device=y.device).unsqueeze(1)
        kept = out[batch, self.ids_keep // w, self.ids_keep % w]  # (N, K, f, f, C)
        return kept.reshape(n * k, f, f, c)


class ConvBlock(nn.Module):
    """A conv block; ``attn`` (the official name) is the depthwise 5x5 conv.

    With ``visible`` (1 = visible, 0 = masked; (N, H, W, 1)) the depthwise conv's input is
    zeroed at masked positions, so no masked pixel reaches a visible position: every other
    operation here is per position. With ``visible`` a :class:`VisibleCells`, ``x`` holds the
    visible cells only, (N*K, f, f, C), and the block computes the same numbers there.
    """

    def __init__(self, dim: int, mlp_ratio: float = 4.0, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)  # eps 1e-5, as the official conv blocks
        self.conv1 = PointwiseConv(dim, dim)
        self.attn = nn.Conv2d(dim, dim, kernel_size=5, padding=2, groups=dim)
        self.conv2 = PointwiseConv(dim, dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio))

    def forward(
        self, x: torch.Tensor, visible: torch.Tensor | VisibleCells | None = None
    ) -> torch.Tensor:
        y = self.conv1(self.norm1(x))  # (N, H, W, C), or (N*K, f, f, C) at visible cells
        if isinstance(visible, VisibleCells):
            y = visible.depthwise(self.attn, y)
        else:
            if visible is not None:
                y = y * visible.to(y.dtype)
            y = _nhwc(self.attn(_nchw(y)))
        x = x + self.drop_path(self.conv2(y))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ConvViTBackbone(nn.Module):
    """What ConvMAE and ConvViT share: patch embeds 1-4 and blocks 1-3.

    A base class rather than a submodule because the official names sit at the top level
    of both models' state dicts (``patch_embed1.proj.weight``, ``blocks3.0.attn.qkv.weight``).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int],
        patch_size: int,
        in_chans: int,
        embed_dim: tuple[int, int, int],
        depth: tuple[int, int, int],
        num_heads: int,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        s1, s2, s3 = stage_strides(patch_size)
        self.img_size: tuple[int, int] = to_2tuple(img_size)
        if self.img_size[0] % patch_size or self.img_size[1] % patch_size:
            raise MaekitError(
                f"input size {self.img_size} is not divisible by the patch size {patch_size}"
            )
        self.patch_size = patch_size
        self.in_chans = in_chans
        h, w = self.img_size
        self.grid_size: tuple[int, int] = (h // patch_size, w // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        d1, d2, d3 = embed_dim
        self.embed_dim = d3

        self.patch_embed1 = ConvPatchEmbed(in_chans, d1, s1)
        self.patch_embed2 = ConvPatchEmbed(d1, d2, s2)
        self.patch_embed3 = ConvPatchEmbed(d2, d3, s3)
        self.patch_embed4 = nn.Linear(d3, d3)
        # stochastic depth grows linearly over all blocks of the three stages, as the official
        dpr = torch.linspace(0, drop_path_rate, sum(depth), device="cpu").tolist()
        self.blocks1 = nn.ModuleList(ConvBlock(d1, mlp_ratio, dpr[i]) for i in range(depth[0]))
        self.blocks2 = nn.ModuleList(
            ConvBlock(d2, mlp_ratio, dpr[depth[0] + i]) for i in range(depth[1])
        )
        self.blocks3 = nn.ModuleList(
            Block(
                d3,
                num_heads,
                mlp_ratio,
                qkv_bias=True,
                drop_path=dpr[depth[0] + depth[1] + i],
                norm_layer=partial(nn.LayerNorm, eps=1e-6),
            )
            for i in range(depth[2])
        )
        self.grad_checkpointing = False  # set by the phase's --grad_ckpt

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Activation checkpointing of every block (all stages, and the ConvMAE decoder)."""
        self.grad_checkpointing = enable

    def run_block(self, blk: nn.Module, x: torch.Tensor, *extra) -> torch.Tensor:
        """``blk(x, *extra)``, checkpointed under --grad_ckpt (see decoder.run_checkpointed)."""
        return run_checkpointed(self.grad_checkpointing, blk, x, *extra)

    def forward_stages(
        self, imgs: torch.Tensor, visible: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stages 1-2 and the stage-3 embedding, before any position embedding.

        imgs (N, C, H, W); visible: optional (N, L) token mask, 1 = visible. Returns the
        tokens (N, L, D3) and the stage-1 / stage-2 outputs (N, 4h, 4w, D1), (N, 2h, 2w, D2).
        """
        if tuple(imgs.shape[-2:]) != self.img_size:
            raise ValueError(
                f"input is {tuple(imgs.shape[-2:])} but the model was built for {self.img_size}"
            )
        vis1 = vis2 = None
        if visible is not None:  # the token mask, block-wise on the finer conv grids
            vis1 = upsample_mask(visible, self.grid_size, 4).unsqueeze(-1)  # (N, 4h, 4w, 1)
            vis2 = upsample_mask(visible, self.grid_size, 2).unsqueeze(-1)  # (N, 2h, 2w, 1)
        # a channels_last image (a cheap 3-channel copy), so the first conv writes NHWC directly
        imgs = imgs.contiguous(memory_format=torch.channels_last)
        x = self.patch_embed1(_nhwc(imgs))  # (N, 4h, 4w, D1)
        for blk in self.blocks1:
            x = self.run_block(blk, x, vis1)
        stage1 = x
        x = self.patch_embed2(x)  # (N, 2h, 2w, D2)
        for blk in self.blocks2:
            x = self.run_block(blk, x, vis2)
        stage2 = x
        x = self.patch_embed3(x)  # (N, h, w, D3)
        x = self.patch_embed4(x.flatten(1, 2))  # (N, L, D3), row-major over the token grid
        return x, stage1, stage2

    def forward_visible_stages(
        self, imgs: torch.Tensor, ids_keep: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Stages 1-2 and the stage-3 embedding at the visible tokens' cells only.

        The same numbers as :meth:`forward_stages` with the mask, at the cells that reach the
        loss: the patch embeds are non-overlapping (a token's cells come from its own pixels
        only) and the masked conv blocks' one neighbourhood operation sees zeros at masked
        cells either way (:class:`VisibleCells`). imgs (N, C, H, W); ids_keep (N, K). Returns
        the visible tokens (N, K, D3) in ``ids_keep`` order and the stage-1 / stage-2 outputs at
        their cells, (N*K, 4, 4, D1) and (N*K, 2, 2, D2).
        """
        if tuple(imgs.shape[-2:]) != self.img_size:
            raise ValueError(
                f"input is {tuple(imgs.shape[-2:])} but the model was built for {self.img_size}"
            )
        n, c = imgs.shape[:2]
        k = ids_keep.shape[1]
        (h, w), p = self.grid_size, self.patch_size
        cells = VisibleCells(ids_keep, self.grid_size)
        pixels = imgs.reshape(n, c, h, p, w, p).permute(0, 2, 4, 3, 5, 1)  # (N, h, w, P, P, C)
        batch = torch.arange(n, device=imgs.device).unsqueeze(1)
        x = pixels[batch, ids_keep // w, ids_keep % w].reshape(n * k, p, p, c)  # NHWC patches
        x = self.patch_embed1(x)  # (N*K, 4, 4, D1)
        for blk in self.blocks1:
            x = self.run_block(blk, x, cells)
        stage1 = x
        x = self.patch_embed2(x)  # (N*K, 2, 2, D2)
        for blk in self.blocks2:
            x = self.run_block(blk, x, cells)
        stage2 = x
        x = self.patch_embed3(x)  # (N*K, 1, 1, D3)
        x = self.patch_embed4(x.reshape(n, k, -1))  # (N, K, D3)
        return x, stage1, stage2


class ConvViT(ConvViTBackbone):
    """ConvViT for fine-tuning and linear probing: mean of the stage-3 tokens -> fc_norm -> head.

    As the official fine-tune model: no multi-scale fusion (the decode convs belong to
    pre-training), a learned ``pos_embed`` (initialised from the pre-trained sin-cos table
    when loading a ConvMAE checkpoint) and no cls token, hence global pooling only.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: tuple[int, int, int] = (256, 384, 768),
        depth: tuple[int, int, int] = (2, 2, 11),
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        global_pool: bool = True,
        drop_path_rate: float = 0.0,
    ) -> None:
        if not global_pool:
            raise ValueError(
                "ConvViT has no cls token: it classifies the mean of its tokens (global_pool=True)"
            )
        super().__init__(
            img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, drop_path_rate
        )
        self.num_classes = num_classes
        self.uses_global_pool = True
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_patches, self.embed_dim))
        self.fc_norm = nn.LayerNorm(self.embed_dim, eps=1e-6)
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        # Official init: trunc_normal(0.02) for pos_embed and every Linear; convs keep torch's.
        trunc_normal_(self.pos_embed, std=0.02)
        self.apply(_init_trunc_normal)

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        x, _, _ = self.forward_stages(imgs)  # (N, L, D3)
        x = x + self.pos_embed
        for blk in self.blocks3:
            x = self.run_block(blk, x)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc_norm(x.mean(dim=1)))  # (N, num_classes)

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(imgs))

    def no_weight_decay(self) -> set[str]:
        """Fine-tuning excludes these (besides 1-D params) from weight decay, as the official."""
        return {"pos_embed"}


def _init_trunc_normal(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- the ConvMAE family's rules
# (read through the family spec in zoo.py; see maekit/models/family.py)


def convvit_layer_id(name: str, num_layers: int) -> int:
    """Official ConvMAE layer ids: the whole conv part (patch embeds 1-4, pos_embed, stage-1/2
    conv blocks) is layer 0; blocks3.i is i+1; the rest (fc_norm, head) num_layers."""
    if name == "pos_embed" or name.startswith(("patch_embed", "blocks1.", "blocks2.")):
        return 0
    if name.startswith("blocks3."):
        return int(name.split(".")[1]) + 1
    return num_layers


def convvit_layer_id_plsc(name: str, num_layers: int) -> int:
    """PLSC's ConvViT variant: blocks1.i and blocks2.i get id i+1 (like blocks3.i), not 0."""
    if name.startswith(("blocks1.", "blocks2.")):
        return int(name.split(".")[1]) + 1
    return convvit_layer_id(name, num_layers)


def convvit_num_layers(model: nn.Module) -> int:
    """Layer decay counts the transformer stage only."""
    return len(model.blocks3) + 1


def convvit_units(model: nn.Module) -> list[nn.Module]:
    """Every block of the three stages (then the ConvMAE decoder's): FSDP units, --grad_ckpt."""
    return [
        *model.blocks1,
        *model.blocks2,
        *model.blocks3,
        *getattr(model, "decoder_blocks", ()),
    ]


def convvit_token_grid(model: nn.Module) -> tuple[int, int]:
    return model.grid_size


def convvit_mask_cells(model: nn.Module) -> int:
    """The mask is drawn on the stage-3 token grid (and upsampled to the conv stages)."""
    return model.num_patches


CONVVIT_KEYS = tuple(
    re.compile(p)
    for p in (
        r"patch_embed[123]\.(?:proj|norm)\.(?:weight|bias)",
        r"patch_embed4\.(?:weight|bias)",
        r"stage[12]_output_decode\.(?:weight|bias)",
        r"pos_embed",
        r"blocks[12]\.\d+\.(?:norm1|conv1|attn|conv2|norm2|mlp\.fc1|mlp\.fc2)\.\w+",
        r"blocks3\.\d+\.(?:norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.\w+",
        r"norm\.(?:weight|bias)",
        *DECODER_PATTERNS,
        *HEAD_PATTERNS,
    )
)


def convvit_owns(state: Mapping[str, torch.Tensor]) -> bool:
    """A ConvMAE / ConvViT state dict: only its names, among them its staged ones."""
    from .family import keys_match

    staged = ("patch_embed1.", "patch_embed2.", "patch_embed3.", "patch_embed4.", "blocks1.")
    return keys_match(state, CONVVIT_KEYS) and any(
        k.startswith((*staged, "blocks2.", "blocks3.")) for k in state
    )


def convvit_patch_of(state: Mapping[str, torch.Tensor]) -> int | None:
    """The overall stride: 4 x the stage-1 conv (strides P/4, 2, 2)."""
    w = state.get("patch_embed1.proj.weight")
    return 4 * int(w.shape[-1]) if w is not None and w.ndim == 4 else None


def convvit_pooled_norm(model: nn.Module) -> nn.Module | None:
    """The norm of the mean-pooled tokens: a fine-tuning encoder's ``fc_norm`` (an Identity in
    timm's cls-token mode); the pre-training model has none (its tokens are normalised)."""
    return getattr(model, "fc_norm", None)
