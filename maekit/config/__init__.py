"""Run configuration: one dataclass per phase and per command, CLI flags generated from the fields.

The resolved config is saved beside every run (``config.json``) and inside every checkpoint
(``args``, a plain dict).

- :mod:`.fields`: :func:`~.fields.opt` and the checks several configs share;
- :mod:`.phases`: pre-training, fine-tuning and linear probing;
- :mod:`.commands`: the commands around them (visualize, extract, knn, plot, shard, stats, bench);
- :mod:`.flags`: the flags generated from a config, and the config built back from them;
- :mod:`.files`: ``--config FILE`` (YAML/JSON, a run's ``config.json``, ``recipe:NAME``).
"""

from .commands import (
    BenchConfig,
    CheckpointModelConfig,
    ExtractConfig,
    FeatureConfig,
    KnnConfig,
    PlotConfig,
    ShardConfig,
    StatsConfig,
    VisualizeConfig,
)
from .phases import (
    CommonConfig,
    FinetuneConfig,
    LinprobeConfig,
    PretrainConfig,
    SupervisedConfig,
)

__all__ = [
    "BenchConfig",
    "CheckpointModelConfig",
    "CommonConfig",
    "ExtractConfig",
    "FeatureConfig",
    "FinetuneConfig",
    "KnnConfig",
    "LinprobeConfig",
    "PlotConfig",
    "PretrainConfig",
    "ShardConfig",
    "StatsConfig",
    "SupervisedConfig",
    "VisualizeConfig",
]
