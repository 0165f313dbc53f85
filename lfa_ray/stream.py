"""Streaming a dataset to the training workers with Ray Data (``data.stream``).

The in-memory path (:func:`lfa_ray.data.load`) decodes the whole set on the driver and puts it in
Ray's object store, where every node maps a full copy. That suits a few thousand photos; a set
that does not fit streams instead:

- the driver only pairs and splits the photos (names; a pack's photo bytes are never read there);
- Ray Data reads the packed Parquet (or the folder's files) in read tasks and decodes and resizes
  each photo in map tasks, on any node's CPUs (:class:`Decode`, the same decoding and checks as
  the in-memory path: a photo that does not decode fails the run with the same one-line error,
  naming its file, when its row is read);
- Ray Train splits the training stream between the workers (``streaming_split``); each worker
  augments its photos itself, each seeded by (seed, epoch, the photo's index in the training
  split), so an epoch's augmentation is the same whichever worker draws a photo (:class:`Loader`);
- validation streams whole to every worker, each keeping every ``world``-th photo by index, so
  the summed metrics are exact, as in memory.

``data.stream: auto`` streams when the decoded set (photos x side² x 4 bytes: RGB and the mask's
coverage) is more than a quarter of the smallest node's object store (:data:`STORE_SHARE`), where
every node would hold a copy beside the trials' own objects; it keeps the in-memory path otherwise.

Streaming needs CPUs that no training worker holds: Ray Data's tasks run in what Ray Train leaves,
so a streamed run leaves one CPU of the cluster to them (:func:`lfa_ray.ray_train.alone`,
:func:`lfa_ray.tune.default_concurrency`).
"""

from __future__ import annotations

import math
import queue
import threading
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import torch

from lfa_ray.data import Arrays, InMemoryFile, Pair, SegmentationDataset, Splits, augmented, is_packed, sized
from lfa_ray.errors import UserError
from lfa_ray.storage import Location, locate

STORE_SHARE = 0.25  # auto streams a decoded set larger than this share of the smallest node's object store
BYTES_PER_PIXEL = 4  # RGB + the mask's coverage, uint8
DECODE_BATCH = 16  # photos per map task's batch
# decoded photos Ray Data may hold ahead of a run's workers, per stream: without a bound it read ahead
# up to 951 MiB of the object store into an epoch of 16,000 photos at 128 px, 570 MiB with it (and
# the same with 64 MiB: other buffers set that floor), the epoch as fast (docs/PERFORMANCE.md)
INGEST_STORE = 256 * 2**20
SHOWN = 4  # photos kept for TensorBoard's overlays (lfa_ray.runlog.N_OVERLAYS)
AHEAD = 2  # batches a Feed reads ahead of its consumer, beyond Ray Data's own prefetch
SHUFFLE_BUFFER = 256  # photos a worker shuffles among (Ray Data's local shuffle), at most the set


@dataclass(frozen=True)
class Streamed:
    """A dataset streamed to the workers: its source and, per split, each photo's index by name
    (what seeds its augmentation; photos of other splits are dropped as they are read)."""
    root: Location
    size: int
    train: dict[str, int]
    val: dict[str, int]
    files: Optional[list[tuple[str, str, str]]] = None  # a folder's (name, image URI, mask URI); None: packed

    def resized(self, size: int) -> "Streamed":
        """The same source read at another ``data.image_size`` (a searched one)."""
        return Streamed(self.root, size, self.train, self.val, self.files)


def decoded_bytes(photos: int, size: int) -> int:
    return photos * size * size * BYTES_PER_PIXEL


def smallest_store() -> float:
    """The object store memory of the cluster's smallest node, in bytes."""
    import ray

    stores = [n["Resources"].get("object_store_memory", 0) for n in ray.nodes() if n["Alive"]]
    return min(stores) if stores else 0.0


def choose(setting, photos: int, size: int, store: float) -> tuple[bool, str]:
    """Whether to stream ``photos`` at ``size`` px for ``data.stream`` = ``setting``, and the console line saying so."""
    need = decoded_bytes(photos, size)
    sizes = f"{photos} photos at {size} px are {_mib(need)} decoded"
    if setting is True:
        return True, f"streamed with Ray Data (data.stream: true; {sizes})"
    if setting is False:
        return False, f"in memory (data.stream: false; {sizes})"
    if need > STORE_SHARE * store:
        return True, (f"streamed with Ray Data: {sizes}, more than a quarter of the smallest node's object store "
                      f"({_mib(store)}) (data.stream: auto)")
    return False, (f"in memory: {sizes}, within a quarter of the smallest node's object store ({_mib(store)}) "
                   f"(data.stream: auto)")


def _mib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def streamed(splits: Splits, root: Location, size: int) -> Streamed:
    """The stream of ``splits`` (of the dataset at ``root``) at ``size`` px."""
    if splits.found is not None:
        splits.found.check_size(size)
    files = None
    if not is_packed(root):
        files = [(p.name, p.image.uri, p.mask.uri) for p in splits.train + splits.val]  # a folder's Locations
    return Streamed(root, size, {p.name: i for i, p in enumerate(splits.train)},
                    {p.name: i for i, p in enumerate(splits.val)}, files)


# -- the Ray Data side -------------------------------------------------------------------------

PACK_READ = ["name", "image", "mask", "image_file", "mask_file"]


def datasets(source: Streamed) -> dict:
    """Ray Datasets of the training and validation photos (lazy: nothing is read until a worker iterates)."""
    import pyarrow.parquet as pq
    import ray.data

    from lfa_ray.console import verbose

    ray.data.DataContext.get_current().enable_progress_bars = verbose()
    if source.files is None:
        names = pq.read_schema(source.root.path, filesystem=source.root.fs).names
        base = ray.data.read_parquet(source.root.path, filesystem=source.root.fs,
                                     columns=PACK_READ + (["coverage"] if "coverage" in names else []))
    else:
        base = ray.data.from_items([{"name": n, "image": i, "mask": m} for n, i, m in source.files])
    return {split: base.map_batches(Decode(source.root.uri, source.size, index), batch_size=DECODE_BATCH,
                                    batch_format="numpy")
            for split, index in (("train", source.train), ("val", source.val))}


def ingest_options():
    """Ray Train's ingest options for a stream (``DataConfig.default_ingest_options``) with Ray Data's
    object store use bounded by :data:`INGEST_STORE`, and within a small object store by an eighth of
    the smallest node's (a run's two streams: a quarter, :data:`STORE_SHARE`), so they do not spill."""
    from ray.train import DataConfig

    bound = INGEST_STORE
    if store := smallest_store():
        bound = min(bound, int(store * STORE_SHARE / 2))
    options = DataConfig.default_ingest_options()
    options.resource_limits = options.resource_limits.copy(object_store_memory=bound)
    return options


class Decode:
    """A Ray Data map: rows of one split (by name) decoded, checked and resized (:func:`lfa_ray.data.sized`)
    into ``index``, ``image`` (size x size x 3 bytes) and ``mask`` (coverage, size x size bytes); other
    rows dropped. Raw bytes, not arrays: a batch without a row of the split stays a plain Arrow column
    (an empty array of images would not convert to Ray's tensor type and be pickled instead)."""

    def __init__(self, root: str, size: int, index: dict[str, int]):
        self.root, self.size, self.index = root, size, index

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [(k, str(name)) for k, name in enumerate(batch["name"]) if str(name) in self.index]
        images, masks = [], []
        for k, name in rows:
            image, mask, _ = sized(self._pair(batch, k, name), self.size)
            images.append(image.tobytes())
            masks.append(mask.tobytes())
        return {"index": np.array([self.index[name] for _, name in rows], dtype=np.int64),
                "image": np.array(images, dtype=object), "mask": np.array(masks, dtype=object)}

    def _pair(self, batch: dict, k: int, name: str) -> Pair:
        if "image_file" in batch:  # a packed row: the bytes are in the batch
            cover = batch["coverage"][k] if "coverage" in batch else None
            return Pair(name, InMemoryFile(f"{self.root}:{batch['image_file'][k]}", str(batch["image_file"][k]),
                                           batch["image"][k]),
                        InMemoryFile(f"{self.root}:{batch['mask_file'][k]}", str(batch["mask_file"][k]),
                                     batch["mask"][k]), None, cover)
        return Pair(name, locate(str(batch["image"][k])), locate(str(batch["mask"][k])))


# -- the worker side ---------------------------------------------------------------------------

class Loader:
    """A worker's batches of a stream, as the in-memory DataLoader gives them: (images Bx3xHxW,
    masks Bx1xHxW), uint8. ``iterator``: the worker's Ray Data iterator (its shard of the training
    stream, or the whole validation stream); ``keep``: ``(rank, world)`` to keep every world-th
    photo by index (validation); ``shuffle``: training's local shuffle, seeded by (seed, epoch).
    ``len()`` is the batches of an epoch (the horizon of train.ema_epochs); the first photos it gave
    stay in ``first`` (TensorBoard's overlays).

    Starting a Ray Data execution takes seconds (planning, read tasks, the first decoded batch), so
    the epochs' starts are hidden behind training: ``then`` (validation) starts reading when an
    epoch of this loader begins, and this loader starts reading its next epoch (up to ``epochs``)
    when one ends, while validation runs (:meth:`warm`, :class:`Feed`)."""

    def __init__(self, iterator, transform, *, size: int, batch_size: int, seed: int, photos: int, shuffle: bool,
                 keep: Optional[tuple[int, int]] = None, then: Optional["Loader"] = None,
                 epochs: Optional[int] = None):
        self.iterator, self.transform, self.batch_size, self.seed = iterator, transform, batch_size, seed
        self.size = size
        self.photos, self.shuffle, self.keep = photos, shuffle, keep
        self.then, self.epochs = then, epochs
        self.epoch = 0
        self.ahead: Optional[Feed] = None
        self.first: list[tuple[np.ndarray, np.ndarray]] = []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def warm(self, epoch: Optional[int] = None) -> None:
        """Start reading ``epoch`` (default: the current one) in the background."""
        epoch = self.epoch if epoch is None else epoch
        if self.ahead is None or self.ahead.epoch != epoch:
            self.ahead = self._feed(epoch)

    def shown(self) -> SegmentationDataset:
        """The first photos this loader gave, as a dataset (TensorBoard's overlays)."""
        images = np.stack([i for i, _ in self.first]) if self.first else np.zeros((0, 1, 1, 3), np.uint8)
        masks = np.stack([m for _, m in self.first]) if self.first else np.zeros((0, 1, 1), np.uint8)
        return SegmentationDataset(Arrays([""] * len(self.first), images, masks), self.transform)

    def __len__(self) -> int:
        return math.ceil(self.photos / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.warm()  # this epoch: read ahead already, or from now
        feed, self.ahead = self.ahead, None
        if self.then is not None:
            self.then.warm()
        pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        s = self.size
        for batch in feed:
            for index, raw_image, raw_mask in zip(batch["index"], batch["image"], batch["mask"], strict=True):
                if self.keep is not None and index % self.keep[1] != self.keep[0]:
                    continue
                image = np.frombuffer(raw_image, np.uint8).reshape(s, s, 3)
                mask = np.frombuffer(raw_mask, np.uint8).reshape(s, s)
                if len(self.first) < SHOWN:
                    self.first.append((image.copy(), mask.copy()))
                pending.append(augmented(self.transform, self.seed, self.epoch, int(index), image, mask))
                if len(pending) == self.batch_size:
                    yield _stack(pending)
                    pending = []
        if self.epochs is not None and self.epoch < self.epochs:
            self.warm(self.epoch + 1)
        if pending:
            yield _stack(pending)

    def _feed(self, epoch: int) -> "Feed":
        shuffle = ({"local_shuffle_buffer_size": min(SHUFFLE_BUFFER, self.photos),
                    "local_shuffle_seed": self.seed * 100003 + epoch} if self.shuffle else {})
        return Feed(self.iterator, epoch, batch_size=self.batch_size, prefetch_batches=2, **shuffle)


class Feed:
    """One epoch of a Ray Data iterator's numpy batches, read by a background thread at most
    :data:`AHEAD` batches ahead of the consumer. A row a map task could not decode ends the run
    with its UserError, raised where the batches are consumed."""

    END = object()

    def __init__(self, iterator, epoch: int, **options):
        self.epoch = epoch
        self.queue: queue.Queue = queue.Queue(maxsize=AHEAD)
        threading.Thread(target=self._read, args=(iterator, options), daemon=True,
                         name=f"lfa_ray-stream-epoch{epoch}").start()

    def _read(self, iterator, options: dict) -> None:
        try:
            for batch in iterator.iter_batches(batch_format="numpy", **options):
                self.queue.put(batch)
            self.queue.put(self.END)
        except BaseException as exc:  # noqa: BLE001 - carried to the consumer's thread
            self.queue.put(exc)

    def __iter__(self):
        while (item := self.queue.get()) is not self.END:
            if isinstance(item, BaseException):  # Ray wraps what a map task raised; the user's line is inside
                raise _user_error(item) or item from None
            yield item


USER_ERROR = f"{UserError.__module__}.{UserError.__name__}: "


def _user_error(exc: BaseException) -> Optional[UserError]:
    """The UserError a Ray Data task raised (a photo that does not decode), from Ray's wrapping of
    it: the exception itself where it survived, else its line in the remote traceback Ray carries."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, UserError):
            return UserError(str(exc).strip().splitlines()[-1])
        line = next((t for t in str(exc).splitlines() if t.startswith(USER_ERROR)), None)
        if line is not None:
            return UserError(line[len(USER_ERROR):])
        exc = exc.__cause__ or exc.__context__
    return None


def _stack(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([i for i, _ in items]), torch.stack([m for _, m in items])

