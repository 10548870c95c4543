"""Training batches from WebDataset shards: an endless, deterministic, resumable stream.

Every rank and every DataLoader worker reads a disjoint part of the data: whole shards when there
are at least as many shards as readers, otherwise every reader takes every n-th sample. The
stream is deterministic given (seed, rank, worker), endless (epoch after epoch, reshuffled), and
resumable: each batch carries its reader's position, and :class:`ShardStream` can start from the
positions saved in a checkpoint. Bad samples (corrupt image, empty or missing caption) and broken
shards are skipped and counted; the counts travel with the batches.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from openalign.errors import UserError
from openalign.media.shards import decode_sample, iter_samples
from openalign.models.tokenizer import tokenize


@dataclass
class ReaderSlot:
    """Which part of the data one reader (rank x worker) takes, and where it is in it."""

    index: int  # global reader index in [0, n_readers)
    n_readers: int
    position: int = 0  # raw samples consumed so far (across epochs)
    epoch: int = 0  # the pass over the data the reader is in


@dataclass
class ShardStream(torch.utils.data.IterableDataset):
    """Endless, deterministic, resumable stream of collated batches from WebDataset shards.

    Use with ``torch.utils.data.DataLoader(stream, batch_size=None, num_workers=W)``. Each yielded
    batch is a dict with ``pixel_values`` (B,3,H,W), ``input_ids``/``attention_mask`` (B,L) when a
    tokenizer is given, ``texts``, and ``state``: the producing reader's slot position and the
    skip counts since its previous batch.
    """

    urls: list[str]
    batch_size: int
    transform: Callable[..., torch.Tensor]
    tokenizer: Any = None
    max_text_len: int = 64
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    num_workers: int = 1
    shuffle_buffer: int = 1000
    start_positions: dict[int, int] = field(default_factory=dict)  # reader index -> raw position
    worker_offset: int = 0  # rotates worker ids so a resumed DataLoader continues the round robin
    epochs: int | None = None  # None = endless

    def __post_init__(self) -> None:
        super().__init__()

    def _reader(self) -> ReaderSlot:
        info = torch.utils.data.get_worker_info()
        wid = info.id if info is not None else 0
        nw = info.num_workers if info is not None else 1
        logical = (wid + self.worker_offset) % nw
        n_readers = self.world_size * nw
        index = self.rank * nw + logical
        return ReaderSlot(index=index, n_readers=n_readers, position=self.start_positions.get(index, 0))

    def _raw_stream(self, slot: ReaderSlot, counts: Counter) -> Iterator[tuple[int, dict]]:
        """(raw position, sample) pairs for this reader, epoch after epoch; ``slot.epoch`` is the
        current epoch (the caller watches it to notice a whole pass without a usable sample)."""
        n_urls = len(self.urls)
        by_shard = n_urls >= slot.n_readers
        pos = 0
        epoch = 0
        while self.epochs is None or epoch < self.epochs:
            rng = random.Random(f"{self.seed}-shards-{epoch}")
            order = list(range(n_urls))
            rng.shuffle(order)
            if by_shard:
                mine = [self.urls[i] for k, i in enumerate(order) if k % slot.n_readers == slot.index]
                samples = iter_samples(mine, counts)
            else:
                samples = (s for j, s in enumerate(iter_samples([self.urls[i] for i in order], counts))
                           if j % slot.n_readers == slot.index)
            buf_rng = random.Random(f"{self.seed}-buffer-{slot.index}-{epoch}")
            slot.epoch = epoch
            any_sample = False
            for s in _shuffled(samples, self.shuffle_buffer, buf_rng):
                any_sample = True
                yield pos, s
                pos += 1
            if not any_sample:
                raise UserError(f"{self.urls[0]}: reader {slot.index}/{slot.n_readers} found no readable sample in "
                                f"{len(self.urls)} shard(s); check the shard spec and that the tars hold KEY.jpg + "
                                "KEY.txt pairs")
            epoch += 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        slot = self._reader()
        counts: Counter = Counter()
        pixels: list[torch.Tensor] = []
        texts: list[str] = []
        epoch, decoded, usable, resumed = 0, 0, 0, False  # this epoch's tallies, to stop a hopeless loop
        for pos, sample in self._raw_stream(slot, counts):
            if slot.epoch != epoch:
                if decoded and not usable and not resumed:
                    raise UserError(self._no_usable_message(slot, counts))
                epoch, decoded, usable, resumed = slot.epoch, 0, 0, False
            if pos < slot.position:
                resumed = True
                continue  # resume: skip what this reader already consumed, without decoding
            decoded += 1
            img, caption, reason = decode_sample(sample)
            counts["samples_read"] += 1
            if reason is not None:
                counts[reason] += 1
                continue
            try:
                # one RNG per sample position: augmentation replays exactly after a resume
                aug_rng = random.Random(f"{self.seed}-aug-{slot.index}-{pos}")
                pixels.append(self.transform(img, aug_rng))
            except Exception:
                counts["corrupt_image"] += 1
                continue
            texts.append(caption)
            usable += 1
            if len(texts) == self.batch_size:
                batch = self._collate(pixels, texts)
                # this reader's position after the batch: where a resumed reader starts
                batch["state"] = {"reader": slot.index, "position": pos + 1, "counts": dict(counts)}
                counts.clear()
                yield batch
                pixels, texts = [], []

    def _no_usable_message(self, slot: ReaderSlot, counts: Counter) -> str:
        names = ", ".join(self.urls[:3]) + (f" and {len(self.urls) - 3} more" if len(self.urls) > 3 else "")
        reasons = {k: v for k, v in counts.items() if k != "samples_read" and v}
        return (f"{names}: a whole pass over {len(self.urls)} shard(s) gave reader {slot.index}/{slot.n_readers} "
                f"no usable sample (skipped: {reasons or 'nothing readable'}); shards need KEY.jpg|png|webp images "
                "with KEY.txt captions (img2dataset's layout)")

    def _collate(self, pixels: list[torch.Tensor], texts: list[str]) -> dict[str, Any]:
        batch: dict[str, Any] = {"pixel_values": torch.stack(pixels), "texts": list(texts)}
        if self.tokenizer is not None:
            batch.update(tokenize(self.tokenizer, texts, self.max_text_len))
        return batch


def _shuffled(it: Iterator[Any], bufsize: int, rng: random.Random) -> Iterator[Any]:
    """Reservoir-style shuffle buffer with a seeded RNG (deterministic)."""
    if bufsize <= 1:
        yield from it
        return
    buf: list[Any] = []
    for x in it:
        if len(buf) < bufsize:
            buf.append(x)
            continue
        k = rng.randrange(len(buf))
        buf[k], x = x, buf[k]
        yield x
    rng.shuffle(buf)
    yield from buf


def make_loader(stream: ShardStream) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(
        stream,
        batch_size=None,
        num_workers=stream.num_workers,
        persistent_workers=False,
        prefetch_factor=2 if stream.num_workers > 0 else None,
    )
