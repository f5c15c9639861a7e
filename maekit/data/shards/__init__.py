"""Image data as WebDataset tar shards: ``maekit shard`` writes them, ``--data_path`` streams them.

One module per concept, in the order a run meets them:

- :mod:`.format`: the files on disk (tar members, ``shards.json``);
- :mod:`.write`: ``maekit shard SRC DST`` writes an image folder as shards;
- :mod:`.locate`: what ``--data_path`` names (folders, patterns, URLs) as a list of shards;
- :mod:`.read`: the samples of one shard, read as raw bytes;
- :mod:`.dataset`: :class:`~.dataset.ShardDataset`, what ``build_dataset`` returns for shards;
- :mod:`.plan`: which stream positions each rank and data worker reads in an epoch;
- :mod:`.stream`: the training and evaluation loaders that read them.
"""
