"""featurize: frozen backbone features per shard in data/features/, incremental, decoded by
several threads, read back by the models through imgrate.features (the format)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import copy_world

from imgrate.backbones import load_backbone
from imgrate.errors import DataError
from imgrate.features import load_features, read_meta, read_shard
from imgrate.featurize import run_stage, wanted_members
from imgrate.images import load_thumbnail
from imgrate.io import read_jsonl
from imgrate.shards import iter_members


def _files(paths) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(paths.features.iterdir())}


def test_one_feature_file_per_shard_equal_to_the_backbone_on_the_decoded_image(tiny_world) -> None:
    params, paths = tiny_world
    wanted = wanted_members(paths)
    meta = read_meta(paths)
    assert meta is not None and (meta.backbone, meta.input_size) == (params.featurize.backbone,
                                                                     params.featurize.input_size)
    names = {p.name for p in paths.features.iterdir()}
    assert names == {"meta.json"} | {f"{s.removesuffix('.tar')}.{ext}" for s in wanted for ext in ("json", "npy")}
    shard = sorted(wanted)[0]
    got = read_shard(paths, shard)
    assert sorted(got.members) == sorted(wanted[shard]) and not got.failed
    assert got.features.shape == (len(wanted[shard]), meta.width) and got.features.dtype == np.float32
    # row i is the backbone's output on member i, decoded as the dataset decodes
    backbone = load_backbone(meta.backbone, meta.input_size)
    data = dict(iter_members(paths.shards / shard, set(got.members[:3])))
    with torch.inference_mode():
        direct = backbone(torch.from_numpy(np.stack([load_thumbnail(data[m], meta.input_size)
                                                     for m in got.members[:3]]))).numpy()
    assert np.allclose(got.features[:3, meta.columns("pooled")], direct, atol=1e-4)


def test_only_new_shards_are_extracted_and_stale_entries_go(tiny_world, tmp_path: Path) -> None:
    params, paths = tiny_world
    local = copy_world(paths, tmp_path)
    before = _files(local)
    shards = sorted(wanted_members(local))
    newest = shards[-1].removesuffix(".tar")
    for ext in ("json", "npy"):  # as if the last shard had just been crawled
        (local.features / f"{newest}.{ext}").unlink()
    (local.features / "999999.npy").write_bytes(b"a shard that is gone")
    summary = run_stage(params.featurize, local)
    assert (summary["shards"], summary["shards_extracted"]) == (len(shards), 1)
    assert summary["images_extracted"] == len(wanted_members(local)[shards[-1]])
    after = _files(local)
    assert set(after) == set(before)
    assert {k: v[0] for k, v in after.items()} == {k: v[0] for k, v in before.items()}  # the same bytes
    untouched = [k for k in before if not k.startswith(newest) and k != "meta.json"]
    assert all(after[k][1] == before[k][1] for k in untouched), "old shards are not written again"
    # nothing new: nothing extracted
    assert run_stage(params.featurize, local)["shards_extracted"] == 0


def test_another_backbone_or_size_extracts_everything_again(tiny_world, tmp_path: Path) -> None:
    params, paths = tiny_world
    local = copy_world(paths, tmp_path)
    other = dataclasses.replace(params.featurize, input_size=32)
    summary = run_stage(other, local)
    assert summary["shards_extracted"] == summary["shards"] and read_meta(local).input_size == 32  # type: ignore[union-attr]
    rows = read_jsonl(local.dataset_index)
    feats = load_features(local, [(r["shard"], r["member"]) for r in rows])
    assert feats.x.shape == (len(rows), feats.meta.width) and feats.meta.input_size == 32


def test_worker_processes_give_the_features_of_one_core(tiny_world, tmp_path: Path) -> None:
    params, paths = tiny_world
    threads = torch.get_num_threads()
    try:
        one = copy_world(paths, tmp_path / "one")
        run_stage(dataclasses.replace(params.featurize, workers=1, input_size=48), one)
        many = copy_world(paths, tmp_path / "many")
        summary = run_stage(dataclasses.replace(params.featurize, workers=3, input_size=48), many)
    finally:
        torch.set_num_threads(threads)
    assert summary["workers"] == 3
    for shard in wanted_members(paths):
        a, b = read_shard(one, shard), read_shard(many, shard)
        assert a.members == b.members
        assert np.allclose(a.features, b.features, atol=1e-5)


def test_decoding_threads_feeding_the_backbone_give_the_same_features(tiny_world) -> None:
    """The GPU path (threads decode while the device embeds), run on the CPU."""
    from imgrate.featurize import Extractor

    params, paths = tiny_world
    meta = read_meta(paths)
    assert meta is not None
    shard = sorted(wanted_members(paths))[0]
    with Extractor(meta, torch.device("cpu"), 8, 3, processes=False) as ex:
        ex.warm()
        got = ex.shard(paths.shards / shard, wanted_members(paths)[shard])
    stored = read_shard(paths, shard)
    assert got.members == stored.members
    assert np.allclose(got.features, stored.features, atol=1e-4)


def test_an_undecodable_image_is_listed_and_named_when_read(tiny_world, tmp_path: Path) -> None:
    from conftest import repack_shard

    params, paths = tiny_world
    local = copy_world(paths, tmp_path)
    shard = sorted(wanted_members(local))[0]
    victim = sorted(wanted_members(local)[shard])[0]
    data = dict(iter_members(local.shards / shard, {victim}))[victim]
    repack_shard(local.shards / shard, {victim: data[:200]})  # a cut JPEG, as a crawler stored it
    summary = run_stage(params.featurize, local)
    assert summary["shards_extracted"] == 1 and summary["failed"] == 1  # the changed shard only
    assert victim in read_shard(local, shard).failed
    with pytest.raises(DataError, match=victim.replace("/", ".")):
        load_features(local, [(shard, victim)])


def test_a_damaged_shard_is_skipped_and_named(tiny_world, tmp_path: Path) -> None:
    params, paths = tiny_world
    local = copy_world(paths, tmp_path)
    shard = sorted(wanted_members(local))[-1]
    for ext in ("json", "npy"):  # as if the damaged shard had just been crawled
        (local.features / f"{shard.removesuffix('.tar')}.{ext}").unlink()
    path = local.shards / shard
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])  # cut: members its manifest names are never reached
    summary = run_stage(params.featurize, local)
    assert summary["shards_extracted"] == 1 and summary["failed"] == len(wanted_members(local)[shard])
    member = sorted(wanted_members(local)[shard])[0]
    with pytest.raises(DataError, match=f"damaged shard: .*{shard}|{shard}.*damaged"):
        load_features(local, [(shard, member)])


def test_missing_features_are_a_clear_error(tmp_path: Path) -> None:
    from imgrate.paths import Paths

    with pytest.raises(DataError, match="run the featurize stage"):
        load_features(Paths(tmp_path), [("000001.tar", "u/x.jpg")])


# --- issue 20: featurize's own outputs are input too; its workers die with it -------------------


@pytest.mark.parametrize("tamper", ["nan", "zeros", "shape"])
def test_features_no_image_gives_are_refused_and_extracted_again(tiny_world, tmp_path: Path, tamper: str) -> None:
    """NaN features ended training in a traceback, zeroed ones trained silently, and featurize
    kept (and DVC committed) a tampered file. Now reading them is one error naming the file
    and what is wrong, and featurize checks the files it keeps and extracts those again."""
    params, paths = tiny_world
    local = copy_world(paths, tmp_path)
    shard = sorted(wanted_members(local))[0]
    npy = local.features / f"{shard.removesuffix('.tar')}.npy"
    good = npy.read_bytes()
    x = np.load(npy)
    if tamper == "nan":
        x[1, 7] = np.nan
    elif tamper == "zeros":
        x[:] = 0
    else:
        x = x[:, :100]
    with open(npy, "wb") as fh:
        np.save(fh, x)
    rows = [(r["shard"], r["member"]) for r in read_jsonl(local.dataset_index) if r["shard"] == shard]
    why = {"nan": "NaN or infinite values", "zeros": "all zeros", "shape": "100 columns"}[tamper]
    with pytest.raises(DataError, match=f"{npy.name}.*{why}.*extracts them again") as err:
        load_features(local, rows)
    assert "\n" not in str(err.value)
    summary = run_stage(params.featurize, local)
    assert summary["shards_extracted"] == 1
    assert npy.read_bytes() == good  # extracted again: the bytes the stage wrote first
    assert load_features(local, rows).x.shape[0] == len(rows)


def test_worker_processes_die_with_the_stage_killed_with_sigkill(tiny_world, tmp_path: Path) -> None:
    """Each kill -9 of featurize left its 2 worker processes (0.4-0.6 GB each) and the
    resource tracker alive for 9+ minutes. Now they end with it (imgrate.lifetime)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import copy_project_files, tiny_params, write_params

    if not Path("/proc/self/stat").exists():
        pytest.skip("finds the stage's child processes in /proc")
    _, paths = tiny_world
    project = tmp_path / "project"
    copy_project_files(project)
    params = tiny_params()
    params["featurize"].update(workers=2, device="cpu", batch_size=2)
    write_params(project, params)
    local = copy_world(paths, project)
    for f in local.features.iterdir():
        f.unlink()

    def children(pid: int) -> list[int]:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(stat.parent.name))
        return found

    def alive(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False

    env = {**os.environ, "IMGRATE_QUIET": "1"}
    env.pop("IMGRATE_ROOT", None)
    proc = subprocess.Popen([sys.executable, "stages/featurize.py"], cwd=project, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kids: list[int] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        kids = children(proc.pid)
        if len(kids) >= 3:  # the 2 workers and the resource tracker
            break
        time.sleep(0.2)
    assert proc.poll() is None and len(kids) >= 3, "the stage ended before its workers were seen"
    while time.monotonic() < deadline and proc.poll() is None and not list(local.features.glob("*.npy")):
        time.sleep(0.2)  # the workers have loaded their backbone and embedded a shard
    assert proc.poll() is None, "the stage ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(alive(k) for k in kids):
        time.sleep(0.2)
    left = [k for k in kids if alive(k)]
    for k in left:  # this test's own processes: never left behind
        os.kill(k, signal.SIGKILL)
    assert not left, f"{len(left)} of the stage's {len(kids)} child processes outlived it"


def test_photo_descriptors_follow_the_backbone_features(tiny_world, tmp_path: Path) -> None:
    """featurize.photo: the 8 photo descriptors of imgrate.photo (measured on the image the
    backbone saw) after the backbone's columns, in a block of their own; a model reads them
    through the same features, and imgrate rank computes the same columns for a new photo."""
    from imgrate.features import FEATURES, PHOTO
    from imgrate.inputs import InputSpec
    from imgrate.photo import PROPERTIES, describe

    params, paths = tiny_world
    assert params.featurize.photo  # the default
    plain_world = copy_world(paths, tmp_path / "plain")
    summary = run_stage(dataclasses.replace(params.featurize, photo=False), plain_world)
    assert summary["shards_extracted"] == summary["shards"]  # another meta: everything again
    plain = read_meta(plain_world)
    local = paths
    meta = read_meta(local)
    assert meta is not None and meta.blocks[-1].name == PHOTO  # last, after the backbone's blocks
    assert plain is not None and plain.blocks == meta.blocks[:-1]
    assert meta.width == plain.width + len(PROPERTIES)
    shard = sorted(wanted_members(local))[0]
    got, before = read_shard(local, shard), read_shard(plain_world, shard)
    assert got.members == before.members
    assert np.allclose(got.features[:, :plain.width], before.features, atol=1e-5)
    data = dict(iter_members(local.shards / shard, set(got.members[:3])))
    images = np.stack([load_thumbnail(data[m], meta.input_size) for m in got.members[:3]])
    assert np.allclose(got.features[:3, meta.columns(PHOTO)], describe(images), atol=1e-6)
    spec = InputSpec("features", meta.input_size, "max_ratio", meta.backbone, meta.width, meta.to_dict())
    again = FEATURES.from_images(spec, images, torch.device("cpu"))
    assert again.shape == (3, meta.width) and np.allclose(again, got.features[:3], atol=1e-4)


def test_grid_block_is_the_mid_level_map_pooled_over_cells(tiny_world, tmp_path: Path) -> None:
    """featurize.grid: the backbone's mid-level map (the last stride-16 block) averaged over
    g x g cells, as a block between the pooled columns and the photo descriptors; the pooled
    columns do not change, the block is what the backbone gives for the decoded image, and
    imgrate rank computes the same columns from the model file."""
    from imgrate.backbones import backbone_spec
    from imgrate.features import FEATURES, GRID, PHOTO, grid_size
    from imgrate.inputs import InputSpec

    params, paths = tiny_world
    default = params.featurize.grid
    other = copy_world(paths, tmp_path / "other")
    summary = run_stage(dataclasses.replace(params.featurize, grid=2 if default == 0 else 0), other)
    assert summary["shards_extracted"] == summary["shards"]  # another meta: everything again
    plain_world, grid_world = (paths, other) if params.featurize.grid == 0 else (other, paths)
    plain, meta = read_meta(plain_world), read_meta(grid_world)
    assert plain is not None and meta is not None
    g = grid_size(meta)
    assert [b.name for b in meta.blocks] == ["pooled", GRID, PHOTO] and g == (default or 2)
    mid = backbone_spec(meta.backbone).mid_width
    assert mid == 112 and meta.columns(GRID) == slice(1280, 1280 + g * g * 112)
    assert meta.width == plain.width + g * g * mid
    assert [b.name for b in plain.blocks] == ["pooled", PHOTO]
    shard = sorted(wanted_members(paths))[0]
    got, before = read_shard(grid_world, shard), read_shard(plain_world, shard)
    assert got.members == before.members
    for name in ("pooled", PHOTO):
        assert np.allclose(got.features[:, meta.columns(name)], before.features[:, plain.columns(name)], atol=1e-5)
    data = dict(iter_members(paths.shards / shard, set(got.members[:3])))
    images = np.stack([load_thumbnail(data[m], meta.input_size) for m in got.members[:3]])
    # the block by hand: the mid-level block's output map, cell means of a g x g grid
    backbone = load_backbone(meta.backbone, meta.input_size)
    maps: list[torch.Tensor] = []
    hook = backbone.net._blocks[backbone.mid].register_forward_hook(lambda _m, _i, out: maps.append(out))
    with torch.inference_mode():
        backbone(torch.from_numpy(images))
    hook.remove()
    (m,) = maps
    assert m.shape[1] == mid and m.shape[2] == m.shape[3] == meta.input_size // 16
    s = m.shape[2]
    edges = [(i * s // g, -(-(i + 1) * s // g)) for i in range(g)]  # cells overlap where g does not divide s
    cells = torch.stack([m[:, :, a:b, c:d].mean(dim=(2, 3)) for a, b in edges for c, d in edges], dim=2)
    assert np.allclose(got.features[:3, meta.columns(GRID)], cells.flatten(1).numpy(), atol=1e-4)
    spec = InputSpec("features", meta.input_size, "max_ratio", meta.backbone, meta.width, meta.to_dict())
    again = FEATURES.from_images(spec, images, torch.device("cpu"))
    assert again.shape == (3, meta.width) and np.allclose(again, got.features[:3], atol=1e-4)
