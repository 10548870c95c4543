"""Shard reading: brace patterns, disjoint readers, deterministic resume, skip counts."""

from collections import Counter

import pytest
import torch

from openalign.media.shards import expand_urls
from openalign.train.data import ReaderSlot, ShardStream
from openalign.models.preprocess import ImageTransform

from conftest import write_shards


def _keys(stream: ShardStream, index: int, n_readers: int) -> list[str]:
    slot = ReaderSlot(index=index, n_readers=n_readers)
    return [s["__key__"] for _, s in stream._raw_stream(slot, Counter())]


def test_brace_patterns_and_joined_specs(tmp_path):
    pattern = write_shards(tmp_path / "a", 40, per_shard=10)
    assert len(expand_urls(pattern)) == 4
    assert len(expand_urls(pattern + "::" + pattern)) == 8
    with pytest.raises(ValueError):
        expand_urls([])


@pytest.mark.parametrize("n_shards_per,readers", [(10, 4), (40, 4)])  # 4 shards (by shard) / 1 shard (by sample)
def test_readers_are_disjoint_and_cover_everything(tmp_path, n_shards_per, readers):
    pattern = write_shards(tmp_path / "s", 40, per_shard=n_shards_per)
    stream = ShardStream(urls=expand_urls(pattern), batch_size=4, transform=ImageTransform(32, 38), epochs=1,
                         shuffle_buffer=8)
    parts = [_keys(stream, i, readers) for i in range(readers)]
    flat = [k for p in parts for k in p]
    assert len(flat) == len(set(flat)) == 40  # no sample twice, none missing
    assert all(parts)


def test_stream_is_deterministic_and_resumes_at_a_position(tmp_path):
    pattern = write_shards(tmp_path / "s", 48, per_shard=12)
    mk = lambda **kw: ShardStream(urls=expand_urls(pattern), batch_size=4, transform=ImageTransform(32, 38, train=True),
                                  shuffle_buffer=16, seed=3, **kw)
    full = [b for _, b in zip(range(6), iter(mk()))]
    again = [b for _, b in zip(range(6), iter(mk()))]
    assert all(torch.equal(a["pixel_values"], b["pixel_values"]) and a["texts"] == b["texts"] for a, b in zip(full, again))
    pos = full[2]["state"]["position"]
    resumed = [b for _, b in zip(range(3), iter(mk(start_positions={0: pos})))]
    for a, b in zip(full[3:], resumed):
        assert a["texts"] == b["texts"] and torch.equal(a["pixel_values"], b["pixel_values"])


def test_bad_samples_counted_in_batch_state(tmp_path):
    pattern = write_shards(tmp_path / "s", 20, per_shard=20, corrupt=2, empty=1)
    stream = ShardStream(urls=expand_urls(pattern), batch_size=17, transform=ImageTransform(32, 38), epochs=1)
    (batch,) = list(iter(stream))
    assert batch["state"]["counts"]["corrupt_image"] == 2 and batch["state"]["counts"]["empty_caption"] == 1
    assert batch["pixel_values"].shape == (17, 3, 32, 32)


def test_truncated_shard_is_named_in_the_counts(tmp_path):
    """A damaged tar is not only counted: the skip summary names the file."""
    from openalign.media.shards import iter_samples

    pattern = write_shards(tmp_path / "s", 40, per_shard=20)
    second = tmp_path / "s" / "00001.tar"
    second.write_bytes(second.read_bytes()[: second.stat().st_size // 2])
    counts: Counter = Counter()
    samples = list(iter_samples(expand_urls(pattern), counts))
    assert 20 <= len(samples) < 40
    assert counts["broken_shard_errors"] >= 1
    named = {k.split(":", 1)[1] for k in counts if k.startswith("broken_shard:")}
    assert named == {str(second)}
