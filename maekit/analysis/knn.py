"""Weighted k-NN classification of frozen features: ``maekit knn`` and the in-training monitor.

The protocol of Wu et al. 2018 / DINO: features are L2-normalised, each val image (query)
finds its k most cosine-similar train images (the bank), each neighbour votes for its label
with weight exp(similarity / T), and the classes are ranked by their summed votes.
Defaults k = 20, T = 0.07. Top-1 and top-5 in percent.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from ..config import KnnConfig
from ..data.sampling import subset_indices
from ..data.workers import loader_workers
from ..engine.distributed import DistEnv, broadcast_object, init_distributed, shutdown
from ..engine.fsdp import gathered
from ..engine.precision import Precision, resolve_precision
from ..errors import MaekitError
from .features import extract_features, is_labeled


def knn_scores(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """Summed neighbour votes per class: (Q, num_classes). bank (N, D), queries (Q, D), any scale."""
    bank = F.normalize(bank.float(), dim=1)
    k = min(k, bank.shape[0])
    out = []
    for q in queries.float().split(chunk):  # (q, D): bounds the (q, N) similarity matrix
        sim = F.normalize(q, dim=1) @ bank.T  # (q, N) cosine similarities
        top_sim, top_idx = sim.topk(k, dim=1)  # (q, k)
        votes = torch.zeros(q.shape[0], num_classes, dtype=sim.dtype, device=sim.device)
        votes.scatter_add_(1, bank_labels[top_idx], (top_sim / temperature).exp())
        out.append(votes)
    return torch.cat(out)


def knn_accuracy(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    query_labels: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
) -> dict[str, float]:
    """{'acc1', 'acc5' (percent), 'n'} of the weighted k-NN classifier."""
    scores = knn_scores(bank, bank_labels, queries, num_classes, k, temperature)
    top = scores.topk(min(5, num_classes), dim=1).indices  # (Q, 5)
    hit = top.eq(query_labels.to(top.device)[:, None])
    n = max(len(query_labels), 1)
    return {
        "acc1": 100.0 * hit[:, 0].sum().item() / n,
        "acc5": 100.0 * hit.any(dim=1).sum().item() / n,
        "n": len(query_labels),
    }


def labeled_splits(data_path: str, transform, reader=None) -> tuple[Dataset, Dataset, int]:
    """(train = bank, val = queries, number of classes); a clear error for unlabeled data."""
    from ..data import BUILTIN, build_dataset
    from ..data.shards.locate import refuse_shards

    refuse_shards(data_path, "k-NN")
    if data_path not in BUILTIN and Path(data_path).is_dir():
        missing = [s for s in ("train", "val") if not (Path(data_path) / s).is_dir()]
        if missing:
            raise MaekitError(
                f"k-NN needs labels: --data_path {data_path} has no {' or '.join(m + '/' for m in missing)} folder; "
                "give train/ and val/ class folders, or 'fashion-mnist'"
            )
    bank = build_dataset(data_path, "train", transform, reader=reader)
    queries = build_dataset(data_path, "val", transform, reader=reader)
    for split, ds in (("train", bank), ("val", queries)):
        if not is_labeled(ds):
            raise MaekitError(
                f"k-NN needs labels: {data_path}/{split} holds images without class folders "
                "(at least two classes are needed); give class sub-folders"
            )
    if list(bank.classes) != list(queries.classes):
        raise MaekitError(
            f"train/ and val/ of {data_path} have different class folders; k-NN needs the same"
        )
    return bank, queries, len(bank.classes)


def knn_evaluate(
    model: torch.nn.Module,
    bank: Dataset,
    queries: Dataset,
    num_classes: int,
    env: DistEnv,
    precision: Precision,
    pool: str = "cls",
    k: int = 20,
    temperature: float = 0.07,
    batch_size: int = 128,
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """Encode bank and queries (sharded over the processes), classify on rank 0, and return the
    result on every rank. Every rank must call it."""
    kw = dict(
        pool=pool,
        batch_size=batch_size,
        env=env,
        precision=precision,
        num_workers=num_workers,
        progress=progress,
    )
    bank_feats, bank_labels, _ = extract_features(model, bank, desc="knn bank", **kw)
    query_feats, query_labels, _ = extract_features(model, queries, desc="knn queries", **kw)
    result = None
    if env.is_main:
        result = knn_accuracy(
            bank_feats, bank_labels, query_feats, query_labels, num_classes, k, temperature
        )
        result["bank"] = len(bank_labels)
        result["k"] = min(k, len(bank_labels))  # the neighbours actually used
    return broadcast_object(result)


def knn_monitor(
    model: torch.nn.Module,
    bank: Dataset,
    queries: Dataset,
    num_classes: int,
    every: int,
    epochs: int,
    env: DistEnv,
    precision: Precision,
    pool: str,
    batch_size: int,
    num_workers: int,
) -> Callable[[int], dict[str, float]]:
    """For pre-training: epoch -> {'knn_acc1', 'knn_acc5'} every ``every`` epochs and at the
    last, {} otherwise. ``model`` is the bare module (not DDP): no collective inside a forward."""

    def metrics(epoch: int) -> dict[str, float]:
        if (epoch + 1) % every and epoch + 1 != epochs:
            return {}
        with gathered(model):  # fsdp: whole blocks, no collectives inside the forwards
            r = knn_evaluate(
                model,
                bank,
                queries,
                num_classes,
                env,
                precision,
                pool,
                batch_size=batch_size,
                num_workers=num_workers,
                progress=sys.stderr.isatty(),
            )
        if env.is_main:
            print(
                f"epoch {epoch}: knn top-1 {r['acc1']:.2f}%  top-5 {r['acc5']:.2f}%  "
                f"({r['n']} queries, bank {r['bank']})",
                flush=True,
            )
        return {"knn_acc1": r["acc1"], "knn_acc5": r["acc5"]}

    return metrics


def run(cfg: KnnConfig) -> dict[str, float]:
    """``maekit knn``: prints and returns {'acc1', 'acc5', 'n', 'bank'}."""
    from ..data.pixels import reader_for_checkpoint
    from ..data.transforms import eval_transform
    from .checkpoint_model import load_checkpoint_model

    cfg.validate()
    # Everything that can fail on user input, before any process group exists.
    loaded = load_checkpoint_model(cfg, random_init=cfg.random_init)
    reader = reader_for_checkpoint(loaded.args, loaded.in_chans, cfg.data_path)
    transform = eval_transform(
        loaded.input_size, loaded.in_chans, loaded.mean, loaded.std, full=reader.mode == "full"
    )
    bank, queries, num_classes = labeled_splits(cfg.data_path, transform, reader)
    bank = Subset(bank, subset_indices(len(bank), cfg.max_bank, cfg.seed))
    queries = Subset(queries, subset_indices(len(queries), cfg.max_query, cfg.seed))
    env = init_distributed(cfg.device)
    try:
        precision = resolve_precision(cfg.amp, env.device)
        workers = loader_workers(cfg.num_workers)
        model = loaded.model.to(env.device)
        result = knn_evaluate(
            model,
            bank,
            queries,
            num_classes,
            env,
            precision,
            cfg.pool,
            cfg.k,
            cfg.temperature,
            cfg.batch_size,
            workers,
        )
        if env.is_main:
            print(
                f"knn {loaded.name} ({loaded.source}) on {cfg.data_path}: top-1 {result['acc1']:.2f}%  "
                f"top-5 {result['acc5']:.2f}%  ({result['n']} val queries, bank of {result['bank']} "
                f"train images, k={result['k']}, T={cfg.temperature}, pool {cfg.pool})"
            )
        return result
    finally:
        shutdown()
