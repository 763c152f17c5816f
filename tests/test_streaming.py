"""Training examples streamed from WebDataset shards group by group: equal to the random-access reader on the
same group schedule, for any worker count, rank and resume step; bounded memory; local paths, `pipe:` and
`file:` URLs; one-line errors."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
import torch
from test_data import FAKE

from avat3r.data.examples import ExampleSampler, GroupSchedule, collate_examples
from avat3r.data.shards import ShardError
from avat3r.data.streaming import StreamError, StreamingExamples, raise_failures

LANES, BLOCK = 2, 2


@pytest.fixture(scope="module")
def group_set(tmp_path_factory) -> Path:
    """3 persons × 2 segments × 2 frames × 8 cameras at 16²; 16 samples a shard, so 2 groups per person."""
    from avat3r.data.prep import prep_synth

    out = tmp_path_factory.mktemp("stream") / "set"
    summary = prep_synth(out, persons=3, frames=2, cameras=8, res=16, seed=4, source=FAKE, n_val=0, n_test=0,
                         maxcount=16)
    assert len(summary.shards) == 6
    return out


def sampler(folder: Path, slots: int, seed: int = 1, **options) -> ExampleSampler:
    return ExampleSampler(folder, "train", seed=seed, require_prior=False,
                          schedule=GroupSchedule(slots, LANES, BLOCK), **options)


def expected(s: ExampleSampler, step: int, rank: int, world: int, batch: int) -> dict:
    from avat3r.train.loop import example_index

    return collate_examples([s.example(example_index(step, rank, world, batch, j)) for j in range(batch)])


def assert_same(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(got[key], value), key
        elif key.endswith("cameras"):
            for a, b in zip(got[key], value):
                assert torch.equal(a.w2c, b.w2c) and torch.equal(a.K, b.K), key
        else:
            assert got[key] == value, key


def loader(ds, workers: int):
    return raise_failures(torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers,
                                                      collate_fn=lambda item: item))


# -- equal to the random-access reader ---------------------------------------------------------------------
@pytest.mark.parametrize("workers", [1, 2])
def test_streamed_batches_equal_the_random_access_ones(group_set, workers):
    world, batch, steps = 2, 2, 8
    s = sampler(group_set, world * batch, reference_views=True)
    persons = set()
    for rank in range(world):
        ds = StreamingExamples(s, 0, steps, rank, world, batch)
        got = list(loader(ds, workers))
        assert len(got) == steps
        for step, b in enumerate(got):
            want = expected(s, step, rank, world, batch)
            assert_same(b, want)
            persons.update(b["person"])
    assert len(persons) > 1  # several groups were visited (the test can fail)
    # a block's steps of one stream come from one group; the next block moves on
    groups = [s.plan((step * world) * batch).group for step in range(0, steps, LANES)]
    assert groups[0] == groups[1] and groups[0] != groups[2]


def test_a_resumed_run_streams_what_the_uninterrupted_run_streamed(group_set):
    s = sampler(group_set, 1)
    full = list(StreamingExamples(s, 0, 12, batch=1).batches())
    for start in (5, 7):  # inside a block of lane 1 and of lane 1 again (blocks of 2 lane steps)
        resumed = list(loader(StreamingExamples(s, start, 12, batch=1), 2))
        assert len(resumed) == 12 - start
        for got, want in zip(resumed, full[start:]):
            assert_same(got, want)


def test_schedule_draws_every_group_once_per_pass(group_set):
    s = sampler(group_set, 3)
    sched, n = s.schedule, len(s.groups)
    assert n == 6 and {p for _, p in s.groups} == {"id000", "id001", "id002"}
    visits = {}
    for i in range(3 * LANES * BLOCK * 4):  # 4 blocks of every stream: 24 visits = 4 passes over 6 groups
        visits.setdefault(sched.visit(i), set()).add(sched.group(s.seed, i, n))
    assert all(len(g) == 1 for g in visits.values())  # one group per visit
    order = [visits[v].pop() for v in sorted(visits)]
    assert all(sorted(order[k:k + n]) == list(range(n)) for k in range(0, len(order), n))
    assert order[:n] != order[n:2 * n]


# -- memory and splitting ------------------------------------------------------------------------------------
@pytest.mark.parametrize("workers, batch, most", [(2, 1, 1), (1, 1, 2), (2, 2, 2), (1, 2, 4)])
def test_each_worker_holds_one_group_per_lane_and_slot(group_set, workers, batch, most):
    s = sampler(group_set, batch)
    peaks, loads = [], 0
    for w in range(workers):
        ds = StreamingExamples(s, 0, 16, batch=batch)
        assert len(list(ds.batches(w, workers))) == 16 // workers
        peaks.append(ds.peak_groups)
        loads += ds.loads
    assert max(peaks) == most  # (lanes / workers) × batch
    # each stream visits 16 / (lanes · block) = 4 blocks and loads a group at most once per block
    assert loads <= LANES * batch * 4


def test_a_rank_streams_only_the_groups_of_its_slots(group_set, monkeypatch):
    import avat3r.data.streaming as streaming

    s = sampler(group_set, 2)
    seen = []
    original = streaming.stream_members
    monkeypatch.setattr(streaming, "stream_members", lambda url, keys, *a: seen.append(url) or original(url, keys))
    mine = {s.schedule.group(s.seed, step * 2 + 1, len(s.groups)) for step in range(8)}
    list(StreamingExamples(s, 0, 8, rank=1, world=2).batches())
    assert {Path(u).name for u in seen} == {s.groups[g][0] for g in mine} and len(seen) <= 4
    assert len(mine) < len(s.groups)  # 4 visits of its one slot (2 lanes × 2 blocks) of 6 groups


# -- shard locations -----------------------------------------------------------------------------------------
def test_pipe_and_file_urls_stream_what_the_local_path_streams(group_set):
    s = sampler(group_set, 1)
    local = list(StreamingExamples(s, 0, 6).batches())
    for template in (f"pipe:cat {group_set}/{{shard}}", f"file://{group_set}/{{shard}}"):
        streamed = list(StreamingExamples(s, 0, 6, shard_url=template).batches())
        for got, want in zip(streamed, local, strict=True):
            assert_same(got, want)


def test_prep_never_mixes_persons_in_a_shard(group_set, tmp_path):
    from avat3r.data.prep import prep_synth
    from avat3r.data.shards import index_shard

    odd = tmp_path / "odd"  # 20 samples a person and shards of 7: the last shard of a person is short
    prep_synth(odd, persons=2, frames=1, cameras=10, res=8, seed=0, source=FAKE, n_val=0, n_test=0, maxcount=7)
    for folder in (group_set, odd):
        shards = sorted(folder.glob("shard-*.tar"))
        persons = [{key.split("/")[0] for key, _, _ in index_shard(p)} for p in shards]
        assert all(len(p) == 1 for p in persons), persons
    assert len(list(odd.glob("shard-*.tar"))) == 6


# -- errors ------------------------------------------------------------------------------------------------------
def one_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg, msg
    return msg


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
def test_bad_settings_and_unreachable_shards_fail_with_one_line(group_set, tmp_path):
    from avat3r.train.recipe import RecipeError, recipe_from_dict

    for data, pattern in (({"loader": "stream", "stream_lanes": 0}, "stream_lanes and data.stream_block must be ≥ 1"),
                          ({"loader": "stream", "stream_lanes": 4, "num_workers": 3}, "must divide data.stream_lanes"),
                          ({"loader": "files"}, "data.loader must be 'random' or 'stream'"),
                          ({"shard_url": "https://host/shards/"}, "must contain {shard}")):
        with pytest.raises(RecipeError) as err:
            recipe_from_dict({"data": data}, source="r.toml")
        assert pattern in one_line(err) and one_line(err).startswith("r.toml: ")

    s = sampler(group_set, 1)
    ds = StreamingExamples(s, 0, 4)
    with pytest.raises(StreamError, match="3 DataLoader workers do not divide the 2 stream lanes"):
        ds.check_workers(3)
    with pytest.raises(StreamError) as err:
        next(loader(ds, 3))  # the same, raised in a worker and passed on as itself
    one_line(err)
    with pytest.raises(StreamError, match="lacks"):
        StreamingExamples(s, 0, 4, shard_url="pipe:cat /x")
    with pytest.raises(StreamError, match="slots"):
        StreamingExamples(s, 0, 4, world=2)

    missing = tmp_path / "nowhere"
    for template in (f"pipe:cat {missing}/{{shard}} 2>/dev/null", f"file://{missing}/{{shard}}",
                     f"{missing}/{{shard}}"):
        ds = StreamingExamples(s, 0, 4, shard_url=template)
        for workers in (0, 2):
            with pytest.raises(ShardError) as err:
                next(loader(ds, workers))
            assert "cannot stream the shard" in one_line(err) and str(missing) in one_line(err)

    # a shard that lacks samples the manifest names (another set under the same names)
    other = tmp_path / "other"
    other.mkdir()
    for shard in group_set.glob("shard-*.tar"):
        with tarfile.open(shard) as src, tarfile.open(other / shard.name, "w") as dst:
            for member in src.getmembers():
                if "/EXP_a/" not in member.name:
                    dst.addfile(member, src.extractfile(member))
    ds = StreamingExamples(s, 0, 4, shard_url=f"{other}/{{shard}}")
    with pytest.raises(ShardError) as err:
        next(iter(ds))
    assert "not in the streamed shard" in one_line(err) and "/EXP_a/" in one_line(err)


# -- training --------------------------------------------------------------------------------------------------
def test_training_streams_and_its_first_batch_is_the_random_access_one(group_set, tmp_path, monkeypatch):
    from test_train import fake_model_factory, fake_save, tiny_recipe

    import avat3r.train.loop as loop

    seen = []
    original = loop.predict
    monkeypatch.setattr(loop, "predict", lambda model, batch: seen.append(batch) or original(model, batch))
    recipe = tiny_recipe(data={"manifest": str(group_set / "manifest.parquet"), "seed": 2, "loader": "stream",
                               "stream_lanes": LANES, "stream_block": BLOCK, "num_workers": 2,
                               "shard_url": f"pipe:cat {group_set}/{{shard}}", "options": {"require_prior": False}},
                         optim={"max_steps": 2}, run={"checkpoint_every": 2, "preview_every": 2})
    result = loop.train(recipe, tmp_path / "run", model_factory=fake_model_factory, save_model=fake_save,
                        progress=False)
    assert result.step == 2 and sorted(result.losses) == [0, 1] and len(seen) == 2
    s = sampler(group_set, 1, seed=2)
    for step in range(2):
        assert_same(seen[step], expected(s, step, 0, 1, 1))
