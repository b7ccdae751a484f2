import itertools

import pytest

from emotrain.data.shardlists import ShardSource, Slot, eval_shards, train_shards

URLS = [f"s-{i:06d}.tar" for i in range(5)]


@pytest.mark.parametrize("world, workers, n", [(2, 2, 5), (3, 1, 2), (1, 2, 5), (3, 2, 7)])
def test_eval_reads_each_shard_exactly_once(world, workers, n):
    urls = URLS[:n] if n <= 5 else [f"x{i}" for i in range(n)]
    seen = [u for r in range(world) for w in range(workers) for u in eval_shards(urls, Slot(r, world, w, workers))]
    assert sorted(seen) == sorted(urls)


def test_train_ranks_disjoint_within_an_epoch_and_reshuffled_across():
    urls = [f"x{i}" for i in range(8)]
    for epoch in range(3):
        parts = [train_shards(urls, Slot(r, 2, w, 2), seed=5, epoch=epoch) for r in range(2) for w in range(2)]
        flat = list(itertools.chain(*parts))
        assert sorted(flat) == sorted(urls)
    e0 = train_shards(urls, Slot(0, 2, 0, 1), seed=5, epoch=0)
    e1 = train_shards(urls, Slot(0, 2, 0, 1), seed=5, epoch=1)
    assert e0 != e1


def test_train_with_fewer_shards_than_readers_never_starves():
    urls = ["a", "b"]
    for r in range(3):
        for w in range(2):
            assert len(train_shards(urls, Slot(r, 3, w, 2), seed=0, epoch=0)) == 1


def test_source_train_is_endless_eval_is_finite():
    train = iter(ShardSource(URLS, rank=0, world_size=1, train=True, seed=1))
    assert len([next(train) for _ in range(12)]) == 12
    assert sorted(d["url"] for d in ShardSource(URLS, 0, 1, train=False)) == URLS
    with pytest.raises(ValueError, match="no shards"):
        ShardSource([], 0, 1, train=False)
