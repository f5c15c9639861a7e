"""``maekit extract``: encoder features of a dataset, no masking, batched, under torchrun too.

Each process encodes a disjoint shard (rank, rank + world, ...; no padded samples, so every
image is encoded exactly once) and rank 0 gathers the rows back into dataset order and
writes them. Output formats (the suffix of ``--out`` picks one):

- ``.safetensors``: tensors ``features`` (N, D) or (N, T, D) float32 and ``labels`` (N,)
  int64 (-1 for unlabeled images); metadata ``names`` (JSON list of file names relative to
  the data path), ``classes`` (JSON list), ``pool``, ``model``, ``checkpoint``.
- ``.npy``: the features array; a sidecar ``<name>.json`` beside it holds ``labels``,
  ``names``, ``classes``, ``pool``, ``model``, ``checkpoint``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Subset
from tqdm import tqdm

from ..config import ExtractConfig
from ..data.robust import SkipUnreadable, collate_readable
from ..data.sampling import subset_indices
from ..data.workers import loader_workers, make_loader
from ..engine.distributed import DistEnv, init_distributed, shutdown
from ..engine.evaluate import RankSplitSampler
from ..engine.precision import Precision, resolve_precision
from ..errors import MaekitError, counted
from ..files import atomic_write, check_overwrite, save_safetensors
from ..models.family import Family, family_of

POOLS = ("cls", "mean", "all")


def encode(model: torch.nn.Module, imgs: torch.Tensor, pool: str) -> torch.Tensor:
    """Features of a batch: cls token (N, D), mean of the patch tokens (N, D), or all (N, T, D).

    The mean goes through the model's ``fc_norm`` where it has one (a global-pool fine-tuned
    encoder), so it is exactly what that model's head sees.
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    family = family_of(model)
    if pool == "cls" and not family.cls_token:
        raise MaekitError(cls_pool_refusal(family))
    tokens = model.forward_features(imgs)  # (N, prefix + L, D)
    if pool == "all":
        return tokens
    if pool == "cls":
        return tokens[:, 0]
    pooled = tokens[:, family.prefix_tokens :].mean(dim=1)
    norm = family.pooled_norm(model)
    return norm(pooled) if norm is not None else pooled


def cls_pool_refusal(family: Family) -> str:
    return (
        f"{family.name} models have no cls token: pool the mean of the tokens "
        "(--pool mean, or --knn_pool mean while pre-training)"
    )


def gather_in_order(local: torch.Tensor, total: int, env: DistEnv) -> torch.Tensor | None:
    """Rows of each rank's RankSplitSampler shard -> all ``total`` rows in dataset order, on rank 0.

    Rank r holds dataset rows r, r + W, r + 2W, ...; shards differ in length by at most one,
    so each is padded to the longest for the collective and the padding is cut off after
    interleaving. Other ranks get None. Single-process: ``local`` itself.
    """
    if not env.distributed:
        return local
    world = env.world_size
    longest = -(-total // world)
    padded = local.new_zeros((longest, *local.shape[1:]))
    padded[: local.shape[0]] = local
    if not env.is_main:
        dist.gather(padded, dst=0)
        return None
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.gather(padded, parts, dst=0)
    # parts[r][j] is dataset row j * W + r: stacking along dim 1 puts the rows in order.
    ordered = torch.stack(parts, dim=1).reshape(longest * world, *local.shape[1:])
    return ordered[:total]


class _WithIndex(Dataset):
    """(image, label, index): the index says which row a readable image fills."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        img, target = self.dataset[i][:2]
        return img, target, i


@torch.no_grad()
def extract_features(
    model: torch.nn.Module,
    dataset: Dataset,
    pool: str,
    batch_size: int,
    env: DistEnv,
    precision: Precision,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "features",
) -> tuple[torch.Tensor, torch.Tensor, list[int]] | tuple[None, None, None]:
    """(features float32, labels int64, dataset indices of the rows) of the readable images on
    rank 0, in dataset order; (None, None, None) on the other ranks. A file that cannot be
    decoded is skipped with a warning (a k-NN monitor must not end a run after its epoch), so
    the rows can be fewer than the dataset. Every rank must call it (it ends in collectives)."""
    if len(dataset) < env.world_size:
        raise MaekitError(
            f"{counted(len(dataset), 'image')} for {env.world_size} processes; run with fewer "
            "processes"
        )
    was_training = model.training
    model.eval()
    sampler = RankSplitSampler(len(dataset), env.rank, env.world_size)
    loader = make_loader(
        SkipUnreadable(_WithIndex(dataset)),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=env.device.type == "cuda",
        collate_fn=collate_readable,
    )
    feats, labels, rows = [], [], []
    # On a terminal a live bar; in a log file a line every 30 s instead of a carriage-return stream.
    bar = tqdm(
        loader,
        desc=desc,
        disable=not (progress and env.is_main),
        dynamic_ncols=True,
        mininterval=0.1 if sys.stderr.isatty() else 30.0,
    )
    for batch in bar:
        if batch is None:  # every image of the batch was unreadable
            continue
        imgs, targets, index = batch
        imgs = imgs.to(env.device, non_blocking=True)
        with precision.autocast():
            f = encode(model, imgs, pool)
        feats.append(f.float())
        labels.append(torch.as_tensor(targets, dtype=torch.int64, device=env.device))
        rows.append(torch.as_tensor(index, dtype=torch.int64))
    model.train(was_training)
    shard = len(sampler)
    # Rows of this rank's shard by position (rank, rank + W, ...); unreadable ones stay 0/invalid.
    shape = _feature_shape(feats, env)
    local = torch.zeros((shard, *shape), device=env.device)
    local_labels = torch.full((shard,), -1, dtype=torch.int64, device=env.device)
    valid = torch.zeros(shard, dtype=torch.int64, device=env.device)
    if feats:
        pos = ((torch.cat(rows) - env.rank) // env.world_size).to(env.device)
        local[pos] = torch.cat(feats)
        local_labels[pos] = torch.cat(labels)
        valid[pos] = 1
    feats = gather_in_order(local, len(dataset), env)
    labels = gather_in_order(local_labels, len(dataset), env)
    valid = gather_in_order(valid, len(dataset), env)
    if feats is None:
        return None, None, None
    keep = valid.bool().cpu()
    if not bool(keep.any()):
        raise MaekitError(
            f"none of the {counted(len(dataset), 'image')} could be read ({desc}); check the data "
            "path "
            "(see the 'skipping unreadable' warnings above)"
        )
    if not bool(keep.all()):
        print(
            f"maekit: warning: {desc}: {int((~keep).sum())} of "
            f"{counted(len(dataset), 'image')} were "
            "unreadable and left out",
            file=sys.stderr,
            flush=True,
        )
    return feats.cpu()[keep], labels.cpu()[keep], torch.nonzero(keep)[:, 0].tolist()


def _feature_shape(feats: list[torch.Tensor], env: DistEnv) -> tuple[int, ...]:
    """The shape of one feature row; from another rank when every image of this one's shard
    was unreadable."""
    mine = tuple(feats[0].shape[1:]) if feats else None
    if not env.distributed:
        return mine or (0,)
    shapes: list = [None] * env.world_size
    dist.all_gather_object(shapes, mine)
    return next((s for s in shapes if s is not None), (0,))


def sample_names(dataset: Dataset, data_path: str, split: str) -> list[str]:
    """A name per image: its file path relative to the data path, or ``split/index`` for
    datasets without files (Fashion-MNIST)."""
    indices = list(range(len(dataset)))
    while isinstance(dataset, Subset):
        indices = [dataset.indices[i] for i in indices]
        dataset = dataset.dataset
    samples = getattr(dataset, "samples", None)
    if samples is None:
        return [f"{split}/{i:06d}" for i in indices]
    paths = [s[0] if isinstance(s, tuple) else s for s in samples]
    return [os.path.relpath(paths[i], data_path) for i in indices]


def is_labeled(dataset: Dataset) -> bool:
    """False for a flat folder of images (every label 0 means nothing)."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return len(getattr(dataset, "classes", ())) > 1


def save_features(
    path: str | Path, features: torch.Tensor, labels: torch.Tensor, names: list[str], meta: dict
) -> list[Path]:
    """Write features + labels + names (+ ``meta`` strings) atomically; returns the files written.
    An existing file is replaced only if it is an earlier extract's (:func:`check_overwrite`)."""
    path = Path(path)
    info = {"names": names, **meta}
    check_feature_outputs(path)
    if path.suffix == ".safetensors":
        tensors = {"features": features, "labels": labels}
        metadata = {k: v if isinstance(v, str) else json.dumps(v) for k, v in info.items()}
        save_safetensors(tensors, path, metadata)
        return [path]
    if path.suffix == ".npy":
        sidecar = path.with_suffix(".json")

        def write_npy(tmp: str) -> None:
            with open(tmp, "wb") as f:
                np.save(f, features.numpy())

        atomic_write(path, write_npy)
        text = json.dumps({"labels": labels.tolist(), **info})
        atomic_write(sidecar, lambda tmp: Path(tmp).write_text(text))
        return [path, sidecar]
    raise MaekitError(f"--out {path}: use a .safetensors or .npy file name")


def check_feature_outputs(path: Path) -> None:
    """Refuse an --out whose files exist and are not an earlier extract's (e.g. X.npy beside
    a run's X.json = config.json)."""
    if path.suffix == ".safetensors":
        check_overwrite(path, _is_feature_file, "a feature file of maekit extract")
    elif path.suffix == ".npy":
        check_overwrite(path, _is_npy, "a .npy array")
        check_overwrite(
            path.with_suffix(".json"), _is_sidecar, "the label file of an earlier maekit extract"
        )
    else:
        raise MaekitError(f"--out {path}: use a .safetensors or .npy file name")


def _is_feature_file(path: Path) -> bool:
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {"features", "labels"} <= set(f.keys())
    except Exception:  # not a safetensors file at all
        return False


def _is_npy(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(6) == b"\x93NUMPY"
    except OSError:
        return False


def _is_sidecar(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            obj = json.loads(f.read(64 << 20))
    except (OSError, ValueError):
        return False
    return isinstance(obj, dict) and {"labels", "names", "pool"} <= set(obj)


def load_features(path: str | Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Read what :func:`save_features` wrote: (features, labels, {names, classes, pool, ...})."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = {
                k: (json.loads(v) if k in ("names", "classes") else v)
                for k, v in (f.metadata() or {}).items()
            }
            return f.get_tensor("features"), f.get_tensor("labels"), meta
    meta = json.loads(path.with_suffix(".json").read_text())
    labels = torch.tensor(meta.pop("labels"), dtype=torch.int64)
    return torch.from_numpy(np.load(path)), labels, meta


def run(cfg: ExtractConfig) -> Path | None:
    """``maekit extract``: returns the output path on rank 0."""
    from ..data import build_dataset
    from ..data.pixels import reader_for_checkpoint
    from ..data.shards.locate import refuse_shards
    from ..data.transforms import eval_transform
    from .checkpoint_model import load_checkpoint_model

    cfg.validate()
    out = Path(cfg.out)
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
        raise MaekitError(f"--out {out}: folder {out.parent} does not exist or is not writable")
    check_feature_outputs(out)
    # Everything that can fail on user input, before any process group exists.
    refuse_shards(cfg.data_path, "maekit extract")
    loaded = load_checkpoint_model(cfg, random_init=cfg.random_init)
    reader = reader_for_checkpoint(loaded.args, loaded.in_chans, cfg.data_path)
    transform = eval_transform(
        loaded.input_size, loaded.in_chans, loaded.mean, loaded.std, full=reader.mode == "full"
    )
    dataset = build_dataset(cfg.data_path, cfg.split, transform, reader=reader)
    dataset = Subset(dataset, subset_indices(len(dataset), cfg.max_images, cfg.seed))
    labeled = is_labeled(dataset)
    env = init_distributed(cfg.device)
    try:
        model = loaded.model.to(env.device)
        precision = resolve_precision(cfg.amp, env.device)
        workers = loader_workers(cfg.num_workers)
        if env.is_main:
            print(
                f"encoding {counted(len(dataset), cfg.split + ' image')} of {cfg.data_path} with "
                f"{loaded.name} "
                f"({loaded.source}), pool {cfg.pool}, on {env.device} x {env.world_size}",
                file=sys.stderr,
            )
        feats, labels, kept = extract_features(
            model,
            dataset,
            cfg.pool,
            cfg.batch_size,
            env,
            precision,
            workers,
            desc=f"extract {cfg.split}",
        )
        if not env.is_main:
            return None
        if not labeled:
            labels = torch.full_like(labels, -1)
        base = dataset.dataset
        meta = {
            "classes": list(getattr(base, "classes", ())) if labeled else [],
            "pool": cfg.pool,
            "model": loaded.name,
            "checkpoint": loaded.source,
            "split": cfg.split,
        }
        names = sample_names(dataset, cfg.data_path, cfg.split)
        written = save_features(out, feats, labels, [names[i] for i in kept], meta)
        print(
            f"wrote {', '.join(map(str, written))}: features {tuple(feats.shape)}, labels {tuple(labels.shape)}"
        )
        return out
    finally:
        shutdown()
