"""The three phases: ``pretrain`` (and, as they land, ``finetune`` and ``linprobe``)."""
