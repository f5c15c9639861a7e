"""``python log_shard_batches.py -m MODULE ARGS``: run MODULE as ``python -m`` would, with the
tar-shard training loader logging the sample keys of each batch it yields, one line per batch
(``EPOCH KEY KEY ...``), to ``$SHARD_BATCH_LOG.rank<R>``.

The test's launcher (under torchrun too): what each rank trained on is observed from outside,
so the production loader carries no test hook.
"""

from __future__ import annotations

import os
import runpy
import sys

from maekit.data.shards.stream import ShardLoader

LOG_ENV = "SHARD_BATCH_LOG"
_batches_with_keys = ShardLoader.batches_with_keys


def _logged(self: ShardLoader):
    """What the loader's ``__iter__`` reads, written down batch by batch as it passes."""
    with open(f"{os.environ[LOG_ENV]}.rank{self.rank}", "a") as log:
        for batch, keys in _batches_with_keys(self):
            log.write(f"{self.epoch} {' '.join(keys)}\n")
            log.flush()
            yield batch, keys


if __name__ == "__main__":
    if sys.argv[1:2] != ["-m"] or len(sys.argv) < 3:
        sys.exit("usage: log_shard_batches.py -m MODULE [ARGS...]")
    ShardLoader.batches_with_keys = _logged
    module, sys.argv = sys.argv[2], [sys.argv[2], *sys.argv[3:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
