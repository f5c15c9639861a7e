"""The shards on disk.

``DST/<split>/shard-000000.tar, ...`` (split = train, val). A sample is the tar members sharing
a key: ``<key>.<ext>`` holds the original image file's bytes (extension of the source,
lower-case) and, when the source has class folders, ``<key>.cls`` holds the class index in
ASCII. Keys are the zero-padded position of the sample in its split. ``shards.json`` beside the
shards lists them with their sample counts and the class names; it is written last.
"""

from __future__ import annotations

from torchvision.datasets.folder import IMG_EXTENSIONS

FORMAT = "maekit-shards/1"
MANIFEST = "shards.json"
IMAGE_EXTS = frozenset(e.lstrip(".") for e in IMG_EXTENSIONS)
SPLITS = ("train", "val")
