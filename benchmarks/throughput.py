"""Throughput of adain-ray against the reference implementations' way, in one run.

    python benchmarks/throughput.py --images 200 --size 256 --device cpu --precision bf16

Measures, on the same generated JPEGs and the same weights:
  1. baseline   - the reference test scripts' way, written plainly here: one image at a time,
                  PIL decode and resize, the style image encoded again for every pair, fp32,
                  output encoded with PIL;
  2. model only - the project's encoder + AdaIN + decoder on preloaded tensors at the chosen
                  batch size and precision: the compute ceiling of this machine for this model,
                  timed in two halves, just before the job and just after it. On the CPU it runs
                  in the job's layout: as many processes side by side as the job has actors, on
                  as many torch threads each (by default one per core, one thread each);
  3. job        - `adain stylize` end to end through Ray: encoded files in, encoded files and
                  the manifest out.
Prints a table and, last, `speedup X.XX` (the job's images/s over the baseline's).
With no --encoder/--decoder it uses random weights (speed does not depend on their values).

    python benchmarks/throughput.py --train --size 128 --batch-size 8 --precision bf16

measures training instead, samples/s at the same batch and crop: the reference trainer's
plain loop (pytorch-AdaIN's train.py: fp32, PIL decode + resize + random crop in the loop,
Adam on the decoder) against one `adain train` worker through Ray Train (metrics.jsonl's
samples/s, the first window left out as warm-up); last line `speedup X.XX` likewise.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import astuple
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import JPEG_CODECS, ModelConfig, OutputSpec, Scale, Sizing, StylizeConfig, TrainConfig
from pipeline.data.cluster import cpu_pool
from pipeline.imaging.codec import prepare
from pipeline.imaging.tensors import batch_to_pixels, to_tensor
from pipeline.model.checkpoint import load_decoder, load_encoder
from pipeline.model.nets import VGG_STAGES, Decoder, Encoder
from pipeline.model.stylizer import StyleTransfer, pick_device
from pipeline.train.metrics import METRICS_FILE

MFLOP_PER_PIXEL = 0.97  # encoder + decoder, about 253 GFLOP per 512x512 image


# Dense tensor-core peaks (TFLOP/s, from NVIDIA's data sheets, SXM parts) at bf16/fp16, for the
# roofline line; other devices need --peak-tflops.
TENSOR_PEAKS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def peak_tflops(device: torch.device, precision: str) -> float | None:
    if device.type != "cuda" or precision == "fp32":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for gpu, peak in TENSOR_PEAKS.items() if gpu in name), None)


def make_images(folder: Path, count: int, size: int, seed: int = 0, distinct: int = 0) -> None:
    """`count` JPEGs of size x size with structure (gradients plus noise); with `distinct`, only
    that many are generated and the rest are hard links to them (thousands of large inputs in
    seconds: every file is still read, decoded and written on its own)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    for i in range(count):
        path = folder / f"img{i:06d}.jpg"
        if distinct and i >= distinct:
            os.link(folder / f"img{i % distinct:06d}.jpg", path)
            continue
        base = np.stack([x, y, (x + y) / 2], -1) * rng.uniform(100, 200, 3)
        pixels = np.clip(base + rng.integers(0, 55, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(path, quality=90)


def random_weights(folder: Path) -> tuple[str, str]:
    """He-initialised weights in pytorch-AdaIN's layouts."""
    torch.manual_seed(0)
    paths = []
    for module, name in ((Encoder(), "vgg_normalised.pth"), (Decoder(), "decoder.pth")):
        for layer in module.modules():
            if isinstance(layer, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
        torch.save(module.state_dict(), folder / name)
        paths.append(str(folder / name))
    return paths[0], paths[1]


_Sampling = TypeVar("_Sampling", bound="Sampling")


class Sampling:
    """Calls `sample()` on a thread of its own: on entering the `with` block, every `every`
    seconds inside it, and once more on leaving it. `cpu` is that thread's CPU time, for
    callers that take it out of the process's own."""

    every = 0.2

    def __init__(self) -> None:
        self.cpu = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        self.sample()
        while not self._stop.wait(self.every):
            self.sample()
        self.sample()
        self.cpu = time.thread_time()

    def __enter__(self: _Sampling) -> _Sampling:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class PeakRss(Sampling):
    """Peak resident memory of this process and all its descendants (Ray's workers included)."""

    def __init__(self) -> None:
        super().__init__()
        self.peak = 0

    def sample(self) -> None:
        self.peak = max(self.peak, self._tree_rss())

    def _tree_rss(self) -> int:
        parents: dict[int, int] = {}
        rss: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
                parents[int(entry)] = int(fields[1])
                rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
            except (OSError, IndexError, ValueError):
                continue
        tree, frontier = {os.getpid()}, [os.getpid()]
        while frontier:
            parent = frontier.pop()
            for pid, ppid in parents.items():
                if ppid == parent and pid not in tree:
                    tree.add(pid)
                    frontier.append(pid)
        return sum(rss.get(pid, 0) for pid in tree)


def timed(fn: Callable[[], int]) -> tuple[float, int, int]:
    """(seconds, images, peak RSS bytes) of one call that returns how many images it made."""
    with PeakRss() as memory:
        start = time.perf_counter()
        images = fn()
        seconds = time.perf_counter() - start
    return seconds, images, memory.peak


def baseline(
    files: list[Path], style: Path, size: int, encoder: str, decoder: str, out: Path, device: torch.device
) -> int:
    """The reference test script's loop: per pair, decode both, encode both, AdaIN, decode, save
    (on the GPU when there is one, as the reference script runs)."""
    vgg, dec = Encoder(), Decoder()
    vgg.load_state_dict(torch.load(encoder, weights_only=True), strict=False)
    dec.load_state_dict(torch.load(decoder, weights_only=True))
    vgg.eval().to(device)
    dec.eval().to(device)

    def load(path: Path) -> torch.Tensor:
        img = Image.open(path).convert("RGB")
        w, h = img.size
        scale = size / min(w, h)
        img = img.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
        return torch.from_numpy(np.array(img)).permute(2, 0, 1).float().div(255)[None].to(device)

    def calc_mean_std(feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, c = feat.shape[:2]
        var = feat.view(n, c, -1).var(dim=2) + 1e-5
        return feat.view(n, c, -1).mean(dim=2).view(n, c, 1, 1), var.sqrt().view(n, c, 1, 1)

    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        for path in files:
            content, style_img = load(path), load(style)
            content_f, style_f = vgg(content), vgg(style_img)
            c_mean, c_std = calc_mean_std(content_f)
            s_mean, s_std = calc_mean_std(style_f)
            output = dec((content_f - c_mean) / c_std * s_std + s_mean)
            pixels = output[0].mul(255).add(0.5).clamp(0, 255).permute(1, 2, 0).to(torch.uint8).cpu().numpy()
            Image.fromarray(pixels).save(out / f"{path.stem}.jpg", quality=90)
    return len(files)


def precision_psnr(
    model: StyleTransfer, encoder: str, decoder: str, files: list[Path], style: Path, size: int
) -> float:
    """PSNR (dB) of the model's 8-bit outputs against fp32's on the first few images: what
    reduced precision costs in the pixels a user gets."""
    reference = StyleTransfer(load_encoder(encoder).module, load_decoder(decoder).module, model.device, "fp32")
    content = torch.stack([to_tensor(prepare(f.read_bytes(), size, crop=True)) for f in files[:4]])
    style_image = to_tensor(prepare(style.read_bytes(), size, crop=True))[None]
    ours, ref = (
        batch_to_pixels(m.stylize(content, m.style_stats(style_image))).astype(np.float64) for m in (model, reference)
    )
    mse = max(float(np.mean((ours - ref) ** 2)), 1e-10)
    return 10 * np.log10(255.0**2 / mse)


def model_only_side_by_side(
    processes: int, threads: int, nets: tuple[str, str], precision: str, size: int, batch: int, images: int
) -> tuple[int, float]:
    """`model_only` in `processes` processes of `threads` torch threads each, timed together (they
    start when all are warm): (images, seconds) with the rate their rates' sum."""
    from benchmarks.throughput import model_only_child  # by its module's name, not __main__'s: spawn imports it

    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(processes), context.Queue()
    args = (start, results, threads, nets, precision, size, batch, max(1, images // processes))
    children = [context.Process(target=model_only_child, args=args) for _ in range(processes)]
    for child in children:
        child.start()
    rates = [results.get() for _ in children]
    for child in children:
        child.join()
    made = sum(n for n, _ in rates)
    return made, made / sum(n / s for n, s in rates)


def model_only_child(start, results, threads, nets, precision, size, batch, images) -> None:
    torch.set_num_threads(threads)
    model = StyleTransfer(load_encoder(nets[0]).module, load_decoder(nets[1]).module, torch.device("cpu"), precision)
    results.put(model_only(model, size, batch, images, start.wait))  # timed once all are warm


def actors_gone(timeout: float = 20.0) -> None:
    """Wait until the job's actor processes have exited (Ray ends them a second or two after the
    job), so that the model's second half runs on a machine as idle as the first's."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        names = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                names.append(Path(f"/proc/{pid}/cmdline").read_bytes())
            except OSError:
                continue
        if not any(b"ray::MapWorker" in name for name in names):
            return
        time.sleep(0.2)


def model_only(
    model: StyleTransfer, size: int, batch: int, images: int, warm: Callable[[], object] = lambda: None
) -> tuple[int, float]:
    """`images` stylized in calls of the size the job makes them (`images_per_call`), after a
    warm-up call (allocations, autotuning, compiling): (images, seconds)."""
    batch = model.images_per_call(size, size, batch)
    batches = max(2, images // batch)
    content = torch.rand(batch, 3, size, size, device=model.device)  # preloaded: no transfers timed
    stats = model.style_stats(torch.rand(1, 3, size, size, device=model.device))
    model.stylize(content, stats)  # warm-up: first-call allocations, autotuning
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    warm()
    start = time.perf_counter()
    for _ in range(batches):
        model.stylize(content, stats)
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return batch * batches, time.perf_counter() - start


def reference_training(files: list[Path], crop: int, batch: int, steps: int, encoder: str) -> float:
    """pytorch-AdaIN's train.py loop, written plainly: samples/s over `steps` steps after one warm-up."""
    vgg, decoder = Encoder(), Decoder()
    vgg.load_state_dict(torch.load(encoder, weights_only=True), strict=False)
    layers = list(vgg.eval().requires_grad_(False))
    slices = [torch.nn.Sequential(*layers[a:b]) for a, b in VGG_STAGES]
    optimizer = torch.optim.Adam(decoder.parameters(), lr=1e-4)

    def load(path: Path) -> torch.Tensor:  # Resize((2 crop, 2 crop)), RandomCrop(crop), ToTensor
        img = Image.open(path).convert("RGB").resize((2 * crop, 2 * crop), Image.BILINEAR)
        left, top = random.randrange(crop + 1), random.randrange(crop + 1)
        pixels = np.array(img.crop((left, top, left + crop, top + crop)))
        return torch.from_numpy(pixels).permute(2, 0, 1).float().div(255)

    def encode_with_intermediate(x: torch.Tensor) -> list[torch.Tensor]:
        feats = [x]
        for stage in slices:
            feats.append(stage(feats[-1]))
        return feats[1:]

    def calc_mean_std(feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, c = feat.shape[:2]
        var = feat.view(n, c, -1).var(dim=2) + 1e-5
        return feat.view(n, c, -1).mean(dim=2).view(n, c, 1, 1), var.sqrt().view(n, c, 1, 1)

    def step(i: int) -> None:
        content = torch.stack([load(random.choice(files)) for _ in range(batch)])
        style = torch.stack([load(random.choice(files)) for _ in range(batch)])
        for group in optimizer.param_groups:
            group["lr"] = 1e-4 / (1.0 + 5e-5 * i)
        style_feats = encode_with_intermediate(style)
        content_feat = encode_with_intermediate(content)[-1]
        c_mean, c_std = calc_mean_std(content_feat)
        s_mean, s_std = calc_mean_std(style_feats[-1])
        t = (content_feat - c_mean) / c_std * s_std + s_mean
        g_t_feats = encode_with_intermediate(decoder(t))
        loss_c = F.mse_loss(g_t_feats[-1], t)
        loss_s = sum(
            F.mse_loss(calc_mean_std(g)[0], calc_mean_std(s)[0]) + F.mse_loss(calc_mean_std(g)[1], calc_mean_std(s)[1])
            for g, s in zip(g_t_feats, style_feats, strict=True)
        )
        loss = loss_c + 10.0 * loss_s
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step(0)
    start = time.perf_counter()
    for i in range(1, steps + 1):
        step(i)
    return batch * steps / (time.perf_counter() - start)


def adain_training(folder: Path, work: Path, crop: int, batch: int, steps: int, precision: str, encoder: str) -> float:
    """One `adain train` worker holding every CPU: samples/s from metrics.jsonl, first window left out."""
    from pipeline.train.trainer import run_training

    log_every = max(1, steps // 4)
    cfg = TrainConfig(
        content=str(folder),
        style=str(folder),
        storage=str(work / "runs"),
        name="bench",
        workers=1,
        cpus_per_worker=float(os.cpu_count() or 1),
        batch_size=batch,
        max_iter=steps + log_every,
        resize=2 * crop,
        crop=crop,
        checkpoint_every=steps + log_every,
        log_every=log_every,
        encoder=encoder,
        precision=precision,
        samples=0,
    )
    run_training(cfg)
    rows = [json.loads(line) for line in (work / "runs" / "bench" / METRICS_FILE).read_text().splitlines()]
    rates = [row["samples_per_s"] for row in rows[1:]]
    return sum(rates) / len(rates)


def train_main(args: argparse.Namespace, work: Path, encoder: str) -> None:
    src = Path(args.input) if args.input else work / "in"
    if not args.input:
        make_images(src, args.images, 2 * args.size)
    files = sorted(src.iterdir())
    from pipeline.data.cluster import connect

    connect("local")  # a Ray of its own, never one already running here
    base = reference_training(files, args.size, args.batch_size, args.steps, encoder)
    ours = adain_training(src, work, args.size, args.batch_size, args.steps, args.precision, encoder)
    print(f"\ntraining, batch {args.batch_size}, crop {args.size}, {os.cpu_count()} CPUs")
    print(f"{'':44} {'samples/s':>10}")
    print(f"{'reference loop (pytorch-AdaIN train.py, fp32)':44} {base:10.2f}")
    print(f"{f'adain train, 1 worker ({args.precision})':44} {ours:10.2f}")
    print(f"speedup {ours / base:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--actors", type=int, default=None)
    parser.add_argument("--cpus-per-actor", type=float, default=None)
    parser.add_argument("--jpeg-codec", default="auto", choices=list(JPEG_CODECS), help="the job's --jpeg-codec")
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks (model only and job)")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense peak at --precision, for the roofline")
    parser.add_argument("--input", help="a directory of images to use instead of generated ones")
    parser.add_argument("--distinct", type=int, default=0, help="generate only this many images, link the rest")
    parser.add_argument("--encoder")
    parser.add_argument("--decoder")
    parser.add_argument("--baseline-images", type=int, default=None, help="images for the slow baseline")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("--train", action="store_true", help="measure training instead (--size is the crop)")
    parser.add_argument("--steps", type=int, default=8, help="timed training steps (--train)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="adain-bench-"))
    try:
        encoder, decoder = (args.encoder, args.decoder) if args.encoder else random_weights(work)
        if args.train:
            train_main(args, work, encoder)
            return
        src = Path(args.input) if args.input else work / "in"
        if not args.input:
            make_images(src, args.images, args.size, distinct=args.distinct)
        style = work / "style.jpg"
        make_images(work / "styles", 1, args.size, seed=99)
        shutil.move(work / "styles" / "img000000.jpg", style)
        files = sorted(src.iterdir())
        rows = []

        device = pick_device(args.device)
        n_base = min(len(files), args.baseline_images or len(files))
        base_out = work / "base"
        seconds, n, peak = timed(lambda: baseline(files[:n_base], style, args.size, encoder, decoder, base_out, device))
        rows.append(("baseline (reference loop, fp32)", n / seconds, peak))

        nets = load_encoder(encoder).module, load_decoder(decoder).module
        model = StyleTransfer(*nets, device, args.precision, compile=args.compile)
        scale = Scale(args.actors, args.batch_size, args.cpus_per_actor, jpeg_codec=args.jpeg_codec)
        cores = float(os.cpu_count() or 1)
        layout = (1, 0) if device.type == "cuda" else astuple(cpu_pool([cores], cores, scale))[::2]
        if device.type == "cpu":
            torch.set_num_threads(layout[1])  # this process's model: as many threads as an actor's

        def model_alone() -> tuple[int, float]:
            if layout[0] == 1 or args.compile:  # --compile: this process's compiled model
                return model_only(model, args.size, args.batch_size, args.images // 4)
            return model_only_side_by_side(
                *layout, (encoder, decoder), args.precision, args.size, args.batch_size, args.images // 4
            )

        # Model only runs in two halves, just before the job and just after it: the machine's
        # speed drifts, and the job is compared with the model at the same time.
        with PeakRss() as memory:
            before = model_alone()

        from pipeline.data.cluster import connect
        from pipeline.data.stylize import run_stylize

        connect("local")  # a Ray of its own, never one already running here
        cfg = StylizeConfig(
            input=str(src),
            styles=(str(style),),
            output=OutputSpec(str(work / "out"), "jpg", 90),
            model=ModelConfig(encoder, decoder, args.device, args.precision, args.compile),
            sizing=Sizing(content_size=args.size, style_size=args.size),
            scale=scale,
        )
        seconds, n, job_peak = timed(lambda: run_stylize(cfg)["ok"])
        job_rate = n / seconds
        actors_gone()
        after = model_alone()
        model_rate = (before[0] + after[0]) / (before[1] + after[1])
        per_call = model.images_per_call(args.size, args.size, args.batch_size)
        compiled = ", compiled" if args.compile else ""
        halves = f"{before[0] / before[1]:.2f} before the job and {after[0] / after[1]:.2f} after"
        # The peak of the half before Ray started: after the job, the process tree holds Ray's processes too.
        side_by_side = f", {layout[0]} processes" if layout[0] > 1 else ""
        name = f"model only ({args.precision}, {per_call} a call{compiled}{side_by_side})"
        rows.append((name, model_rate, memory.peak))
        rows.append(("job (adain stylize through Ray)", job_rate, job_peak))

        print(f"\n{len(files)} images {args.size}x{args.size}, device {device}, {os.cpu_count()} CPUs")
        print(f"{'':44} {'images/s':>9} {'ms/image':>9} {'peak RSS':>9}  of model")
        for name, rate, peak in rows:
            share = f"{rate / model_rate:7.0%}" if name.startswith("job") else ""
            print(f"{name:44} {rate:9.2f} {1000 / rate:9.1f} {peak / 2**30:7.2f}GB  {share}")
        print(f"model only, images/s: {halves}")
        if device.type == "cpu":  # each actor makes one call at a time on its cores
            # The model calls' own time inside the job, from the manifest: the same minutes as the job,
            # so the job's share of it is its overhead alone, whatever the machine's speed did meanwhile.
            rows_ms = pq.read_table(work / "out" / "_manifest", columns=["status", "model_ms"]).to_pydict()
            in_job_ms = sum(ms for st, ms in zip(rows_ms["status"], rows_ms["model_ms"], strict=True) if st == "ok")
            in_job = n / (in_job_ms / 1000 / layout[0])
            share = job_rate / in_job
            print(f"the model calls inside the job: {in_job:.2f} images/s; the job, start to end, {share:.0%} of that")
        tflops = model_rate * args.size**2 * MFLOP_PER_PIXEL * 1e6 / 1e12
        peak = args.peak_tflops or peak_tflops(device, args.precision)
        roofline = f", {tflops / peak:.0%} of {peak:g} TFLOP/s peak" if peak else ""
        print(f"model-only compute: {tflops:.2f} TFLOP/s ({MFLOP_PER_PIXEL} MFLOP per pixel{roofline})")
        if args.precision != "fp32":
            psnr = precision_psnr(model, encoder, decoder, files, style, args.size)
            print(f"{args.precision} outputs vs fp32: PSNR {psnr:.1f} dB")
        print(f"speedup {job_rate / rows[0][1]:.2f}")
    finally:
        if args.keep:
            print(f"work directory: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
