"""Regenerate the PLSC golden files with the real tool: ``python tests/golden/make_paddle_golden.py``.

Needs paddlepaddle (CPU wheel; ``pip install paddlepaddle``), which the tests themselves never
import. A tiny MAE is built in Paddle with PLSC's structured parameter names (the names
``maekit.formats.paddle`` expects: ``blocks.0.attn.qkv.weight``, Linear weights [in, out]),
saved the way PLSC's training loop saves it, and run once on a fixed input; Paddle's own
outputs are stored beside the files so the tests compare maekit against Paddle, not against
itself. Written (in tests/golden/plsc_mae/):

- ``checkpoint-1.pd``: ``paddle.save({'model', 'optimizer', 'epoch', 'scaler', 'args'})`` after
  one AdamW step under a GradScaler, ``args`` an ``argparse.Namespace`` (PLSC's save routine);
- ``mae.pdparams``: ``paddle.save(model.state_dict())``, the flat file;
- ``dtypes.pdparams``: one tensor of every dtype Paddle training writes (fp32, fp16, bf16 --
  stored by Paddle as uint16 --, int64, int32, uint8, bool);
- ``reference.npz``: the input, masking noise and Paddle's outputs (loss, pred, mask, encoder
  features), plus the dtype tensors' values as float64;
- ``versions.json``: the paddle, numpy and python versions that wrote them.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F

OUT = Path(__file__).resolve().parent / "plsc_mae"
# The geometry the tests register as mae_vit_golden / vit_golden (tests/golden/models.py).
GEOMETRY = dict(
    img_size=32,
    patch_size=8,
    in_chans=3,
    embed_dim=16,
    depth=2,
    num_heads=2,
    decoder_embed_dim=16,
    decoder_depth=1,
    decoder_num_heads=2,
    mlp_ratio=4.0,
)


class Attention(nn.Layer):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape([b, n, 3, self.num_heads, c // self.num_heads])
        q, k, v = qkv.transpose([2, 0, 3, 1, 4]).unbind(0)  # (B, H, N, hd) each
        attn = F.softmax(q.matmul(k.transpose([0, 1, 3, 2])) * self.scale, axis=-1)
        return self.proj(attn.matmul(v).transpose([0, 2, 1, 3]).reshape([b, n, c]))


class Mlp(nn.Layer):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact erf GELU, as timm's Block
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Layer):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, epsilon=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, epsilon=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Layer):
    def __init__(self, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2D(in_chans, dim, patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose([0, 2, 1])  # (N, L, D)


class MaskedAutoencoderViT(nn.Layer):
    """PLSC's MAE structure and names; random (not official) init, enough for a golden file."""

    def __init__(
        self,
        img_size,
        patch_size,
        in_chans,
        embed_dim,
        depth,
        num_heads,
        decoder_embed_dim,
        decoder_depth,
        decoder_num_heads,
        mlp_ratio,
    ) -> None:
        super().__init__()
        self.p, self.c = patch_size, in_chans
        num_patches = (img_size // patch_size) ** 2
        rand = nn.initializer.Normal(std=0.2)
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = self.create_parameter([1, 1, embed_dim], default_initializer=rand)
        self.pos_embed = self.create_parameter(
            [1, num_patches + 1, embed_dim], default_initializer=rand
        )
        self.pos_embed.stop_gradient = True  # fixed table, as PLSC's
        self.blocks = nn.LayerList([Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, epsilon=1e-6)
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = self.create_parameter([1, 1, decoder_embed_dim], default_initializer=rand)
        self.decoder_pos_embed = self.create_parameter(
            [1, num_patches + 1, decoder_embed_dim], default_initializer=rand
        )
        self.decoder_pos_embed.stop_gradient = True
        self.decoder_blocks = nn.LayerList(
            [Block(decoder_embed_dim, decoder_num_heads, mlp_ratio) for _ in range(decoder_depth)]
        )
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim, epsilon=1e-6)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans)
        for name, p in self.named_parameters():  # LayerNorms and biases away from 1/0
            if "norm" in name or name.endswith("bias"):
                p.set_value(
                    p.numpy()
                    + np.random.default_rng(len(name)).normal(0, 0.1, p.shape).astype("float32")
                )

    def patchify(self, imgs):
        n, c, h, w = imgs.shape
        g, p = h // self.p, self.p
        x = imgs.reshape([n, c, g, p, g, p]).transpose([0, 2, 4, 3, 5, 1])  # (N, h, w, p, q, c)
        return x.reshape([n, g * g, p * p * c])

    def forward_features(self, imgs):
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand([x.shape[0], -1, -1])
        x = paddle.concat([cls, x], axis=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward(self, imgs, mask_ratio, noise):
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        n, length, d = x.shape
        keep = int(length * (1 - mask_ratio))
        ids_shuffle = paddle.argsort(noise, axis=1)
        ids_restore = paddle.argsort(ids_shuffle, axis=1)
        x = paddle.take_along_axis(x, ids_shuffle[:, :keep].unsqueeze(-1).tile([1, 1, d]), axis=1)
        mask = paddle.concat([paddle.zeros([n, keep]), paddle.ones([n, length - keep])], axis=1)
        mask = paddle.take_along_axis(mask, ids_restore, axis=1)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand([n, -1, -1])
        x = paddle.concat([cls, x], axis=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.decoder_embed(self.norm(x))
        dd = x.shape[2]
        tokens = paddle.concat(
            [x[:, 1:, :], self.mask_token.tile([n, length + 1 - x.shape[1], 1])], axis=1
        )
        tokens = paddle.take_along_axis(tokens, ids_restore.unsqueeze(-1).tile([1, 1, dd]), axis=1)
        x = paddle.concat([x[:, :1, :], tokens], axis=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        pred = self.decoder_pred(self.decoder_norm(x))[:, 1:, :]
        loss = ((pred - self.patchify(imgs)) ** 2).mean(axis=-1)
        return (loss * mask).sum() / mask.sum(), pred, mask


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    paddle.seed(0)
    np.random.seed(0)
    paddle.set_device("cpu")
    model = MaskedAutoencoderViT(**GEOMETRY)
    g, n = GEOMETRY["img_size"] // GEOMETRY["patch_size"], 2
    rng = np.random.default_rng(0)
    imgs = rng.normal(size=(n, 3, GEOMETRY["img_size"], GEOMETRY["img_size"])).astype("float32")
    noise = rng.random((n, g * g)).astype("float32")

    # One AdamW step under a GradScaler, so optimizer and scaler hold real state (PLSC's loop).
    opt = paddle.optimizer.AdamW(learning_rate=1e-3, parameters=model.parameters(), beta2=0.95)
    scaler = paddle.amp.GradScaler(init_loss_scaling=1024)
    loss, _, _ = model(paddle.to_tensor(imgs), 0.75, paddle.to_tensor(noise))
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    opt.clear_grad()

    model.eval()
    with paddle.no_grad():
        loss, pred, mask = model(paddle.to_tensor(imgs), 0.75, paddle.to_tensor(noise))
        features = model.forward_features(paddle.to_tensor(imgs))
    args = argparse.Namespace(
        model="mae_vit_golden",
        input_size=GEOMETRY["img_size"],
        batch_size=2,
        mask_ratio=0.75,
        norm_pix_loss=False,
        blr=1.5e-4,
        epochs=2,
    )
    paddle.save(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "epoch": 1,
            "scaler": scaler.state_dict(),
            "args": args,
        },
        str(OUT / "checkpoint-1.pd"),
    )
    paddle.save(model.state_dict(), str(OUT / "mae.pdparams"))

    values = np.linspace(-3, 3, 12).reshape(3, 4)
    dtypes = {
        "f32": paddle.to_tensor(values, dtype="float32"),
        "f16": paddle.to_tensor(values, dtype="float16"),
        "bf16": paddle.to_tensor(values, dtype="bfloat16"),
        "i64": paddle.to_tensor(np.arange(-6, 6).reshape(3, 4), dtype="int64"),
        "i32": paddle.to_tensor(np.arange(-6, 6).reshape(3, 4), dtype="int32"),
        "u8": paddle.to_tensor(np.arange(12).reshape(3, 4), dtype="uint8"),
        "bool": paddle.to_tensor(np.arange(12).reshape(3, 4) % 2 == 0),
    }
    paddle.save(dtypes, str(OUT / "dtypes.pdparams"))

    np.savez(
        OUT / "reference.npz",
        imgs=imgs,
        noise=noise,
        loss=loss.numpy(),
        pred=pred.numpy(),
        mask=mask.numpy(),
        features=features.numpy(),
        **{f"dtype_{k}": v.astype("float32").numpy().astype("float64") for k, v in dtypes.items()},
    )
    versions = {
        "paddlepaddle": paddle.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "script": "tests/golden/make_paddle_golden.py",
    }
    (OUT / "versions.json").write_text(json.dumps(versions, indent=1) + "\n")
    print(f"wrote {OUT}: {sorted(p.name for p in OUT.iterdir())}", file=sys.stderr)


if __name__ == "__main__":
    main()
