"""The pipeline's stages called as Ray calls them, in this process: plan -> decode -> model -> write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline.config import ModelConfig, OutputSpec, Sizing
from pipeline.data.decode import decode_inputs
from pipeline.data.model_actor import StyleModel
from pipeline.data.plan import RESUME_EXISTING, RESUME_NEVER, DrawnStyles, EveryStyle, Plan
from pipeline.data.rows import DECODED_SCHEMA, PENDING, SKIPPED
from pipeline.data.styles import StyleSet
from pipeline.data.writers import FileWriter, ShardWriter, write_outputs
from pipeline.imaging.codec import prepare
from pipeline.imaging.tensors import to_tensor
from pipeline.model.loader import load_model
from pipeline.storage.index import ObjectIndex
from pipeline.storage.keys import augmented_key, output_key
from tests import images
from tests.conftest import WeightFiles

SIZING = Sizing(content_size=32, style_size=32)


def random_styles(n: int, seed: int = 0) -> StyleSet:
    rng = np.random.default_rng(seed)
    mean = rng.normal(0.5, 0.3, (n, 512)).astype(np.float32)
    std = rng.uniform(0.2, 1.5, (n, 512)).astype(np.float32)
    return StyleSet(tuple(f"s{i}" for i in range(n)), mean, std)


def listing(src: Path, names: list[str]) -> pa.Table:
    for i, name in enumerate(names):
        images.write(src / name, images.encoded(40 + 8 * (i % 2), 32, "PNG", seed=i))
    return pa.table(
        {
            "input_uri": [str(src / n) for n in names],
            "rel_path": names,
            "key": [n.rsplit(".", 1)[0] for n in names],
            "size": pa.nulls(len(names), pa.int64()),
            "mtime_ns": pa.nulls(len(names), pa.int64()),
        }
    )


def test_the_model_actor_gives_each_item_its_own_style_and_alpha(weights: WeightFiles, tmp_path: Path) -> None:
    """Rows of two shapes, each with its own drawn styles and alphas, some items done already:
    every pending item equals stylizing its image alone with its style and alpha."""
    styles = random_styles(5)
    inputs = listing(tmp_path / "in", [f"img{i}.png" for i in range(6)])
    output = OutputSpec(str(tmp_path / "out"), "png")
    plan = Plan(DrawnStyles(styles.ids, 3, (0.2, 0.9), seed=4), FileWriter(output, augmented_key))
    decoded = decode_inputs(inputs, plan=plan, sizing=SIZING).to_pylist()
    decoded[1]["done"] = [True, False, True]  # as a resumed run finds them
    decoded[2]["done"] = [False, False, True]
    model_cfg = ModelConfig(str(weights.vgg), str(weights.decoder), "cpu")
    actor = StyleModel(model_cfg, styles, SIZING, batch_size=4)
    out = actor(pa.Table.from_pylist(decoded, schema=DECODED_SCHEMA)).to_pylist()

    assert len(out) == 6 * 3
    assert sum(r["status"] == SKIPPED for r in out) == 3
    reference = load_model(str(weights.vgg), str(weights.decoder), "cpu")
    by_item = {(r["rel_path"], r["style"]): r for r in out}
    for row in decoded:
        content = to_tensor(prepare((tmp_path / "in" / row["rel_path"]).read_bytes(), 32))[None]
        for style, alpha, done in zip(row["styles"], row["alphas"], row["done"], strict=True):
            item = by_item[(row["rel_path"], style)]
            assert item["status"] == (SKIPPED if done else PENDING) and item["alpha"] == pytest.approx(alpha)
            if done:
                continue
            i = styles.ids.index(style)
            stats = (torch.from_numpy(s[i]).view(1, -1, 1, 1) for s in (styles.mean, styles.std))
            expected = reference.stylize(content, tuple(stats), torch.tensor([alpha]).view(1, 1, 1, 1))[0]
            got = np.frombuffer(item["pixels"], np.uint8).reshape(item["height"], item["width"], 3)
            want = (expected.permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
            assert np.abs(got.astype(int) - want.astype(int)).max() <= 1, (row["rel_path"], style)


def test_writers_name_once_and_write_what_the_plan_named(weights: WeightFiles, tmp_path: Path) -> None:
    """The plan's targets are where the files land; an existing output is `done` for the next
    plan (in the one listing of the output); shards hold one sample per pending row and are never `done`."""
    styles = random_styles(2)
    inputs = listing(tmp_path / "in", ["a.png", "b.png"])
    output = OutputSpec(str(tmp_path / "out"), "png")
    plan = Plan(EveryStyle(styles.ids, 1.0), FileWriter(output, output_key), RESUME_EXISTING)
    actor = StyleModel(ModelConfig(str(weights.vgg), str(weights.decoder), "cpu"), styles, SIZING, batch_size=4)
    decoded = decode_inputs(inputs, plan=plan, sizing=SIZING)
    assert decoded.column("targets").to_pylist()[0] == [f"{output.uri}/s0/a.png", f"{output.uri}/s1/a.png"]
    written = write_outputs(actor(decoded), writer=plan.writer, encoded=False).to_pylist()
    assert {r["status"] for r in written} == {"ok"}
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png")) == [
        "s0/a.png", "s0/b.png", "s1/a.png", "s1/b.png",
    ]  # fmt: skip
    again = decode_inputs(inputs, plan=plan, sizing=SIZING, existing=plan.existing()).to_pylist()
    assert all(all(r["done"]) and r["pixels"] is None for r in again)  # all there: not even read

    shards = Plan(EveryStyle(styles.ids, 1.0), ShardWriter(output, "r1", rows_per_call=10), RESUME_EXISTING)
    decoded = decode_inputs(inputs, plan=shards, sizing=SIZING)
    assert not any(d for r in decoded.column("done").to_pylist() for d in r)
    written = write_outputs(actor(decoded), writer=shards.writer, encoded=False).to_pylist()
    assert {r["output_uri"] for r in written} == {next((tmp_path / "out" / "shards").glob("r1-*.tar")).as_posix()}
    assert sorted(r["shard_member"] for r in written) == ["a__s0", "a__s1", "b__s0", "b__s1"]


def test_what_is_there_already_is_one_listing(tmp_path: Path) -> None:
    """The index of existing outputs: names at any depth, of the output's extension only, with the
    time each was written; nothing outside the prefix; an output not there yet is not there."""
    out = tmp_path / "out"
    for rel in ("a.png", "sub/b.png", "sub/deeper/c.png", "d.jpg"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(b"x")
    index = ObjectIndex.build(str(out), (".png",))
    assert len(index) == 3
    asked = [f"{out}/a.png", f"{out}/sub/b.png", f"{out}/sub/deeper/c.png", f"{out}/d.jpg", f"{out}/e.png"]
    assert index.written_since([*asked, f"{tmp_path}/a.png"], None) == [True, True, True, False, False, False]
    written = (out / "a.png").stat().st_mtime_ns
    assert index.written_since([f"{out}/a.png"], written) == [True]
    assert index.written_since([f"{out}/a.png"], written + 1) == [False]  # its input changed since
    assert len(ObjectIndex.build(str(tmp_path / "missing"), (".png",))) == 0
    overwrite = Plan(EveryStyle(("s0",)), FileWriter(OutputSpec(str(out), "png"), output_key), RESUME_NEVER)
    assert overwrite.existing() is None  # --overwrite: nothing listed
