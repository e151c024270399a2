"""Decoder training (`adain train`): the objective, DDP, checkpoints, resume, S3 (worker and node
failure: tests/test_cluster_failures.py).

Expected loss values come from tests/reference.py (float64, explicit formulas, no code from
`pipeline`). Every Ray test runs on the session's one local Ray (2 CPUs), with small images
(32..64 px, resized to 64x64 and cropped to 32x32) and a handful of iterations.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.cli import build_parser, main, parse
from pipeline.cli.commands import train_config
from pipeline.config import TrainConfig
from pipeline.errors import ConfigError
from pipeline.model.checkpoint import load_decoder, load_encoder
from pipeline.model.nets import Decoder
from pipeline.train.checkpoints import load_training_state
from pipeline.train.loop import train_step
from pipeline.train.metrics import MetricsLog
from pipeline.train.trainer import export_decoder, latest_checkpoint, run_training
from tests import images, reference
from tests.conftest import S3Server, WeightFiles

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def quick_ray_train(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray Train's controller polls its workers every 2 s, which adds seconds to the start and end of
    every few-step run here; the tests poll every 0.2 s (Ray passes the variable on to the controller)."""
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Ray gives each 1-CPU worker one torch thread; float32 convolutions round differently with more."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# helpers


def batch(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """(n, 3, size, size) images in [0, 1] with structure."""
    return torch.stack(
        [torch.from_numpy(images.gradient(size, size, seed + i)).permute(2, 0, 1).float().div(255) for i in range(n)]
    )


def write_image_sets(root: Path, contents: int = 6, styles: int = 4, bad: int = 1) -> tuple[Path, Path]:
    """Content and style folders of small images of assorted sizes and formats, plus broken files."""
    for i in range(contents):
        images.write(root / "content" / f"c{i}.jpg", images.encoded(48 + 4 * (i % 6), 40, seed=i))
    for i in range(styles):
        images.write(root / "style" / f"s{i}.png", images.encoded(40, 56 - 4 * (i % 4), "PNG", seed=100 + i))
    for i in range(bad):
        images.write(root / "content" / f"broken{i}.jpg", images.truncated_jpeg())
    return root / "content", root / "style"


def small_config(weights: WeightFiles, content: str, style: str, storage: str, name: str, **kw: Any) -> TrainConfig:
    options: dict[str, Any] = {
        "workers": 2,
        "batch_size": 2,
        "max_iter": 4,
        "resize": 64,
        "crop": 32,
        "checkpoint_every": 2,
        "log_every": 1,
        "encoder": str(weights.vgg),
        **kw,
    }
    return TrainConfig(content=content, style=style, storage=storage, name=name, **options)


def metrics_rows(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def checkpoint_state(path: Path) -> dict[str, Any]:
    return load_training_state((path / "state.pt").read_bytes())


# ---------------------------------------------------------------------------------------------
# 1. the objective, against the float64 reference


def reference_losses(
    weights: WeightFiles, decoder_state: dict[str, torch.Tensor], content: torch.Tensor, style: torch.Tensor
) -> dict[str, float]:
    """pytorch-AdaIN's Net.forward in float64, from the formulas alone."""
    content_feats = reference.vgg_features(weights.vgg_state, content)
    style_feats = reference.vgg_features(weights.vgg_state, style)
    target = reference.adain(
        content_feats["relu4_1"].numpy(), *reference.mean_std(style_feats["relu4_1"].numpy())
    )  # t, with alpha = 1
    output = reference.decode(decoder_state, torch.from_numpy(target))  # g(t)
    output_feats = reference.vgg_features(weights.vgg_state, output)
    loss_c = float(np.mean((output_feats["relu4_1"].numpy() - target) ** 2))
    loss_s = 0.0
    for name in reference.RELU_X_1:
        out_mean, out_std = reference.mean_std(output_feats[name].numpy())
        style_mean, style_std = reference.mean_std(style_feats[name].numpy())
        loss_s += float(np.mean((out_mean - style_mean) ** 2) + np.mean((out_std - style_std) ** 2))
    img = output.numpy()
    tv = float(np.abs(np.diff(img, axis=2)).mean() + np.abs(np.diff(img, axis=3)).mean())
    return {"content": loss_c, "style": loss_s, "tv": tv}


def test_one_step_loss_matches_the_float64_reference(weights: WeightFiles, tmp_path: Path) -> None:
    """The losses of a step equal pytorch-AdaIN's formulas in float64; the step uses the scheduled lr
    and changes the decoder only."""
    encoder = load_encoder(str(weights.vgg)).module
    torch.manual_seed(3)
    decoder = Decoder()
    before = {k: v.clone() for k, v in decoder.state_dict().items()}
    encoder_before = {k: v.clone() for k, v in encoder.state_dict().items()}
    optimizer = torch.optim.Adam(decoder.parameters())
    weights_ = {"content_weight": 1.5, "style_weight": 10.0, "tv_weight": 0.5}
    cfg = TrainConfig("c", "s", str(tmp_path), "unit", lr_decay=0.1, **weights_)
    content, style = batch(2, 32, seed=1), batch(2, 32, seed=7)

    terms = train_step(encoder, decoder, optimizer, content, style, cfg, step=3)

    expected = reference_losses(weights, before, content, style)
    assert terms.content.item() == pytest.approx(1.5 * expected["content"], rel=2e-4)
    assert terms.style.item() == pytest.approx(10.0 * expected["style"], rel=2e-4)
    assert terms.tv.item() == pytest.approx(0.5 * expected["tv"], rel=2e-4)
    total = 1.5 * expected["content"] + 10.0 * expected["style"] + 0.5 * expected["tv"]
    assert terms.total.item() == pytest.approx(total, rel=2e-4)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-4 / (1 + 0.1 * 3))
    assert all(torch.equal(v, encoder.state_dict()[k]) for k, v in encoder_before.items())
    assert any(not torch.equal(v, decoder.state_dict()[k]) for k, v in before.items())


def test_bf16_step_is_close_to_fp32(weights: WeightFiles, tmp_path: Path) -> None:
    """--precision bf16 autocasts the networks but keeps the statistics in float32: same losses, roughly."""
    encoder = load_encoder(str(weights.vgg)).module
    content, style = batch(2, 32, seed=2), batch(2, 32, seed=9)
    losses = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        decoder = Decoder()
        cfg = TrainConfig("c", "s", str(tmp_path), "unit", precision=precision)
        terms = train_step(encoder, decoder, torch.optim.Adam(decoder.parameters()), content, style, cfg, 0)
        assert terms.total.dtype == torch.float32
        losses[precision] = terms.total.item()
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05)


def test_metrics_are_appended_locally_and_uploaded_in_batches_to_object_stores(
    tmp_path: Path, s3_server: S3Server, bucket: str
) -> None:
    """A metrics row costs one line, not a rewrite of the file: locally the file is appended in
    place (its inode stays; rows already there are kept); an object store gets the whole file
    at most every upload_every_s, and at once when a row asks for it (at checkpoints)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"iteration": 1}\n')
    inode = (run / "metrics.jsonl").stat().st_ino
    log = MetricsLog(str(run))
    for iteration in (2, 3):
        log.add({"iteration": iteration, "loss_total": 1.0 / iteration})
        assert (run / "metrics.jsonl").stat().st_ino == inode
    log.close()
    assert [r["iteration"] for r in metrics_rows((run / "metrics.jsonl").read_text())] == [1, 2, 3]

    remote = f"s3://{bucket}/runs/x"
    client = s3_server.client()
    log = MetricsLog(remote, upload_every_s=3600.0)
    log.add({"iteration": 1, "loss_total": 1.0})
    assert client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0  # not yet: throttled
    log.add({"iteration": 2, "loss_total": 0.5}, sync=True)
    body = client.get_object(Bucket=bucket, Key="runs/x/metrics.jsonl")["Body"].read().decode()
    assert [r["iteration"] for r in metrics_rows(body)] == [1, 2]
    log.add({"iteration": 3, "loss_total": 0.3})
    log.close()
    again = MetricsLog(remote)  # a restarted worker group goes on from what was uploaded
    again.add({"iteration": 4, "loss_total": 0.2}, sync=True)
    again.close()
    body = client.get_object(Bucket=bucket, Key="runs/x/metrics.jsonl")["Body"].read().decode()
    assert [r["iteration"] for r in metrics_rows(body)] == [1, 2, 3, 4]


def test_learning_rate_follows_pytorch_adain() -> None:
    cfg = TrainConfig("c", "s", "/tmp/runs", "unit", lr=1e-4, lr_decay=5e-5)
    assert [cfg.learning_rate(i) for i in (0, 1, 10_000)] == [1e-4, 1e-4 / (1 + 5e-5), 1e-4 / 1.5]


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"crop": 600}, "--crop 600 is larger than --resize 512"),
        ({"crop": 8}, "--crop 8: the model takes 9 pixels a side at least"),
        ({"name": "../escape"}, "--name"),
        ({"name": ""}, "--name"),
        ({"precision": "fp16"}, "--precision fp16"),
        ({"batch_size": 0}, "--batch-size 0"),
        ({"workers": 0}, "--workers 0"),
        ({"lr_decay": -1.0}, "--lr-decay -1.0"),
        ({"content": ""}, "--content is required"),
        ({"content_weight": 0.0, "style_weight": 0.0}, "nothing to learn"),
    ],
)
def test_bad_config_values_are_config_errors(options: dict[str, Any], words: str) -> None:
    values = {"content": "c", "style": "s", "storage": "/tmp/runs", "name": "unit", **options}
    with pytest.raises(ConfigError, match=re.escape(words)):
        TrainConfig(**values)


def test_yaml_config_supplies_options_and_flags_win(tmp_path: Path) -> None:
    """jobs/configs/train.yaml is valid for the train command; flags override its values."""
    args = parse(["train", "--config", str(REPO / "jobs" / "configs" / "train.yaml"), "--max-iter", "10"])
    cfg = train_config(args)
    assert (cfg.content, cfg.style) == ("s3://my-bucket/datasets/coco/train2014/", "s3://my-bucket/datasets/wikiart/")
    assert (cfg.workers, cfg.gpus_per_worker, cfg.max_iter, cfg.precision) == (4, 1.0, 10, "bf16")
    assert cfg.run_uri == "s3://my-bucket/adain-runs/coco-wikiart"

    local = tmp_path / "train.yaml"
    local.write_text("content: data/c\nstyle: data/s\nstorage: runs\nname: x\nbogus: 1\n")
    with pytest.raises(ConfigError, match="unknown option 'bogus'"):
        parse(["train", "--config", str(local)])
    local.write_text("content: data/c\nstyle: data/s\nstorage: runs\nname: x\nresume: true\n")
    cfg = train_config(parse(["train", "--config", str(local)]))
    assert cfg.resume and cfg.storage == str(Path("runs").resolve())  # local paths made absolute once


def _cli_has_train() -> bool:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return "train" in commands.choices


@pytest.mark.skipif(not _cli_has_train(), reason="the train command is not in pipeline/cli yet")
def test_adain_train_and_the_ray_job_entrypoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`adain train` reports bad options in one line; jobs/train.py is the same command."""
    argv = ["train", "--content", str(tmp_path), "--style", str(tmp_path), "--storage", str(tmp_path)]
    assert main([*argv, "--name", "x", "--crop", "600"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "adain: error: --crop 600 is larger than --resize 512; crops are cut from it"
    assert main([*argv, "--name", "x", "--config", str(tmp_path / "missing.yaml")]) == 2
    job = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "train.py"), "--help"], capture_output=True, text=True, cwd=tmp_path
    )
    assert job.returncode == 0, job.stderr
    assert "--resume" in job.stdout and "--export-pytorch-adain" in job.stdout


# ---------------------------------------------------------------------------------------------
# 2. two workers = one worker with the concatenated batch


def _ddp_step(config: dict[str, Any]) -> None:
    """Runs on each Ray Train worker: one train_step on this rank's half of the batch under DDP."""
    import ray.train
    import ray.train.torch

    rank = ray.train.get_context().get_world_rank()
    half = config["content"].shape[0] // 2
    rows = slice(rank * half, (rank + 1) * half)
    encoder = load_encoder(config["encoder"]).module
    torch.manual_seed(5)
    model = ray.train.torch.prepare_model(Decoder())
    assert isinstance(model, torch.nn.parallel.DistributedDataParallel)
    optimizer = torch.optim.Adam(model.parameters())
    cfg = TrainConfig("c", "s", config["out"], "ddp", lr=1e-3)
    terms = train_step(encoder, model, optimizer, config["content"][rows], config["style"][rows], cfg, 0)
    if rank == 0:
        grads = {name: p.grad.clone() for name, p in model.module.named_parameters()}
        params = {k: v.clone() for k, v in model.module.state_dict().items()}
        torch.save({"grads": grads, "params": params}, f"{config['out']}/ddp.pt")
    ray.train.report({"loss": terms.total.item()})


def test_two_workers_take_the_step_of_one_worker_with_both_batches(
    ray_cluster: str, weights: WeightFiles, tmp_path: Path
) -> None:
    """DDP over gloo averages the gradients: 2 workers with batch 2 each = 1 worker with batch 4."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    content, style = batch(4, 32, seed=11), batch(4, 32, seed=21)
    config = {"content": content, "style": style, "encoder": str(weights.vgg), "out": str(tmp_path)}
    TorchTrainer(
        _ddp_step,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name="ddp", storage_path=str(tmp_path / "runs")),
    ).fit()
    distributed = torch.load(tmp_path / "ddp.pt", weights_only=True)

    encoder = load_encoder(str(weights.vgg)).module
    torch.manual_seed(5)
    decoder = Decoder()
    optimizer = torch.optim.Adam(decoder.parameters())
    with torch_threads(1):  # as each worker runs
        train_step(encoder, decoder, optimizer, content, style, TrainConfig("c", "s", str(tmp_path), "one", lr=1e-3), 0)

    for name, param in decoder.named_parameters():
        grad = distributed["grads"][name]
        assert float((grad - param.grad).norm() / param.grad.norm()) < 1e-5, name
    for key, value in decoder.state_dict().items():
        torch.testing.assert_close(distributed["params"][key], value, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# 3. a short run: the loss falls; checkpoints, metrics, samples, an exported decoder that works


def test_short_run_learns_and_exports_a_decoder_that_transfer_loads(
    ray_cluster: str,
    weights: WeightFiles,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 24 images a set: 4 epochs of 6 steps, as each epoch starts the reading over (seconds).
    content, style = write_image_sets(tmp_path / "data", contents=24, styles=24, bad=2)
    monkeypatch.chdir(weights.vgg.parent)  # --encoder relative to here, as the README's offline example has it
    storage = tmp_path / "runs"
    argv = [
        "train", "--content", str(content), "--style", str(style), "--storage", str(storage), "--name", "short",
        "--workers", "2", "--batch-size", "2", "--max-iter", "24", "--resize", "64", "--crop", "32",
        "--checkpoint-every", "8", "--log-every", "4", "--keep-checkpoints", "2",
        "--encoder", f"./{weights.vgg.name}", "--export-pytorch-adain",
    ]  # fmt: skip
    args = parse(argv)
    assert args.run(args) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "iteration 24" in printed and "2 unreadable images skipped" in printed
    # Each logged iteration is printed as training goes: losses and throughput.
    logged = re.findall(r"^adain: train iteration (\d+)/24: content [\d.e+-]+, .*samples/s$", captured.err, re.M)
    assert logged == ["4", "8", "12", "16", "20", "24"], captured.err

    run = storage / "short"
    rows = metrics_rows((run / "metrics.jsonl").read_text())
    assert [r["iteration"] for r in rows] == [4, 8, 12, 16, 20, 24]
    assert rows[-1]["loss_total"] < 0.7 * rows[0]["loss_total"], [r["loss_total"] for r in rows]
    for row in rows:
        assert row["loss_total"] == pytest.approx(row["loss_content"] + row["loss_style"] + row["loss_tv"], rel=1e-5)
        assert row["lr"] == pytest.approx(1e-4 / (1 + 5e-5 * (row["iteration"] - 1)))
        assert row["workers"] == 2 and row["samples_per_s"] > 0 and row["resumed_from"] == 0
    assert rows[-1]["skipped_images"] == 2

    checkpoints = sorted(p.name for p in run.glob("checkpoint_*") if p.is_dir())
    assert checkpoints == ["checkpoint_00000016", "checkpoint_00000024"]  # --keep-checkpoints 2
    for name in checkpoints:
        assert checkpoint_state(run / name)["iteration"] == int(name.split("_")[1])
        with Image.open(run / name / "samples.jpg") as grid:
            assert grid.size == (3 * 32, 2 * 32)  # content | style | output, one row per sample (batch 2)

    exported = load_decoder(str(run / "decoder.pth"))
    assert exported.meta["encoder"] == load_encoder(str(weights.vgg)).sha256
    assert exported.meta["iteration"] == 24
    assert exported.meta["config"]["max_iter"] == 24
    assert exported.meta["losses"]["loss_total"] == pytest.approx(rows[-1]["loss_total"])
    final = checkpoint_state(run / "checkpoint_00000024")["decoder"]
    assert all(torch.equal(v, final[k]) for k, v in exported.module.state_dict().items())
    plain = torch.load(run / "decoder-pytorch-adain.pth", weights_only=True)
    assert set(plain) == set(final) and all(torch.equal(plain[k], final[k]) for k in final)

    assert latest_checkpoint(str(run)) == str(run / "checkpoint_00000024")
    older = export_decoder(str(run / "checkpoint_00000016"), str(tmp_path / "decoder-16.pth"))
    assert older["iteration"] == 16 and load_decoder(str(tmp_path / "decoder-16.pth")).meta["iteration"] == 16

    photo = images.write(tmp_path / "photo.jpg", images.encoded(40, 32, seed=77))
    for decoder in (run / "decoder.pth", run / "decoder-pytorch-adain.pth"):
        out = tmp_path / f"stylized-{decoder.stem}.png"
        argv = [
            "transfer", str(photo), str(style / "s0.png"), "-o", str(out), "--decoder", str(decoder),
            "--encoder", str(weights.vgg), "--device", "cpu", "--content-size", "32", "--style-size", "32",
        ]  # fmt: skip
        assert main(argv) == 0
        with Image.open(out) as img:
            assert img.size == (40, 32)


# ---------------------------------------------------------------------------------------------
# 4. on object storage: data, checkpoints and metrics in s3://, a stop and a resume from there


def test_a_run_on_s3_stops_and_resumes_at_the_saved_iteration_and_learning_rate(
    ray_cluster: str, weights: WeightFiles, s3_server: S3Server, bucket: str
) -> None:
    """Images read from s3:// prefixes; checkpoints, metrics and the decoder written to s3://. A
    second session needs --resume, and goes on from the checkpoint there: the iteration, the
    learning-rate schedule and Adam's moments carry over."""
    s3 = s3_server.client()
    # 16 images a set: a session's iterations within one epoch, as each epoch starts the reading over (seconds).
    for i in range(16):
        s3.put_object(Bucket=bucket, Key=f"coco/c{i}.jpg", Body=images.encoded(48, 40, seed=i))
        s3.put_object(Bucket=bucket, Key=f"wikiart/s{i}.png", Body=images.encoded(40, 48, "PNG", seed=50 + i))
    s3.put_object(Bucket=bucket, Key="coco/broken.jpg", Body=b"not an image")
    storage = f"s3://{bucket}/runs"

    def config(**kw: Any) -> TrainConfig:
        options = {"name": "s3run", "lr": 1e-3, "lr_decay": 0.25, **kw}
        return small_config(weights, f"s3://{bucket}/coco/", f"s3://{bucket}/wikiart/", storage, **options)

    first = run_training(config(max_iter=4))
    assert first["decoder"] == f"{storage}/s3run/decoder.pth"
    assert first["skipped_images"] == 1 and "s3://" in next(iter(first["skipped"]))

    with pytest.raises(ConfigError, match="already holds a run named s3run; pass --resume"):
        run_training(config(max_iter=6))  # the same name without --resume: refused, nothing touched
    with pytest.raises(ConfigError, match="no run named never"):
        run_training(config(max_iter=6, resume=True, name="never"))
    second = run_training(config(max_iter=6, resume=True))
    assert second["iteration"] == 6

    def body(key: str) -> bytes:
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="runs/s3run/")["Contents"]}
    for it in (4, 6):  # --keep-checkpoints 3 keeps 2, 4 and 6; check the last two
        assert {f"runs/s3run/checkpoint_{it:08d}/state.pt", f"runs/s3run/checkpoint_{it:08d}/samples.jpg"} <= keys
        state = load_training_state(body(f"runs/s3run/checkpoint_{it:08d}/state.pt"))
        assert state["iteration"] == it
    assert {int(s["step"]) for s in state["optimizer"]["state"].values()} == {6}  # Adam's moments carried over
    rows = metrics_rows(body("runs/s3run/metrics.jsonl").decode())
    assert [(r["iteration"], r["resumed_from"]) for r in rows] == [(1, 0), (2, 0), (3, 0), (4, 0), (5, 4), (6, 4)]
    for row in rows:  # step i (0-based) runs at lr / (1 + lr_decay * i), across the stop
        assert row["lr"] == pytest.approx(1e-3 / (1 + 0.25 * (row["iteration"] - 1)))
    sessions = json.loads(body("runs/s3run/run.json"))["sessions"]
    assert [(s["resume"], s["config"]["max_iter"]) for s in sessions] == [(False, 4), (True, 6)]
    with Image.open(io.BytesIO(body("runs/s3run/checkpoint_00000006/samples.jpg"))) as grid:
        assert grid.size == (96, 64)
    assert load_decoder(f"{storage}/s3run/decoder.pth").meta["iteration"] == 6
