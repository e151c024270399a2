"""Videos through `adain stylize`: frames/s of one video, and what temporal smoothing does to flicker and style.

    python benchmarks/video.py --size 128 --seconds 10 --fps 24 --smoothing 0.9

Generates a clip (a still texture, small white blocks switching on and off: local changes that move a
frame's feature statistics, the cause of AdaIN's flicker) and a style texture, then runs the whole
job (`run_stylize`, this machine's local Ray, one style) once per smoothing, 0 and --smoothing, and
prints per run: frames/s of the job (wall time, Ray's and the actor's start included) and of its model
actors alone (the manifest's model_ms: decoding, lead-ins, the model, encoding and uploads), the manifest's
`flicker` (the output's mean absolute frame-to-frame change over the input's) and the style loss
(train/losses.py's: the MSE of channel means and stds at relu1_1..relu4_1 between each output frame
and the style, averaged over the frames). With no --encoder/--decoder it uses random He-init weights
(throughput.py's): speed does not depend on their values; flicker and style loss do, so quote those
with real weights where they can be had.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project
sys.path.insert(0, str(Path(__file__).resolve().parent))  # throughput.py, next to this file

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image
from throughput import random_weights

from pipeline.config import ModelConfig, OutputSpec, Sizing, StylizeConfig, VideoSpec
from pipeline.data.cluster import connect
from pipeline.data.stylize import run_stylize
from pipeline.model.loader import load_model
from pipeline.train.losses import style_loss


def make_clip(path: Path, size: int, frames: int, fps: int, seed: int = 0) -> Path:
    """A still texture with small white blocks switching on and off at random: each switch is a local
    change of the content that moves the whole frame's feature statistics, the cause of AdaIN's flicker."""
    rng = np.random.default_rng(seed)
    scene = rng.random((size, size, 3)) * 0.5 + 0.25
    blocks = [(int(rng.integers(0, size - 12)), int(rng.integers(0, size - 12))) for _ in range(8)]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps, options={"crf": "16", "g": str(2 * fps)})
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        for i in range(frames):
            image = scene.copy()
            for by, bx in blocks:
                if rng.random() < 0.5:
                    image[by : by + 12, bx : bx + 12] = 1.0
            frame = av.VideoFrame.from_ndarray((image * 255).astype(np.uint8), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def style_image(path: Path, size: int = 128) -> Path:
    rng = np.random.default_rng(7)
    noise = rng.random((size // 8, size // 8, 3))
    Image.fromarray((noise * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC).save(path)
    return path


def style_losses(video: Path, style: Path, encoder: str, decoder: str, every: int = 4) -> float:
    """The mean style loss of every `every`-th frame of `video` against the style image."""
    model = load_model(encoder, decoder, "cpu")

    def to_batch(image: np.ndarray | Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255

    with torch.inference_mode():
        style_feats = model.encoder.features(to_batch(Image.open(style).convert("RGB")))
        with av.open(str(video)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)][::every]
        losses = [float(style_loss(model.encoder.features(to_batch(f)), style_feats)) for f in frames]
    return float(np.mean(losses))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="the clip's width and height")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fps", type=int, default=24)
    parser.add_argument("--smoothing", type=float, default=0.9, help="compared with 0")
    parser.add_argument("--segment-seconds", type=float, default=2.0, help="segments (with lead-ins) of the job")
    parser.add_argument("--encoder")
    parser.add_argument("--decoder")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="adain-video-bench-"))
    frames = round(args.seconds * args.fps)
    (work / "in").mkdir()
    make_clip(work / "in" / "clip.mp4", args.size, frames, args.fps)
    style = style_image(work / "style.png")
    encoder, decoder = (args.encoder, args.decoder) if args.encoder else random_weights(work)
    connect("local")  # as the job starts a Ray (a Ray of its own, never one already running here)
    print(f"clip: {args.size}x{args.size}, {frames} frames at {args.fps} fps; segments of {args.segment_seconds:g} s")
    print(f"{'smoothing':>9}  {'wall s':>7}  {'frames/s':>8}  {'model fr/s':>10}  {'flicker':>7}  {'style loss':>10}")
    for smoothing in (0.0, args.smoothing):
        out = work / f"out-{smoothing:g}"
        cfg = StylizeConfig(
            input=str(work / "in"),
            styles=(str(style),),
            output=OutputSpec(str(out)),
            model=ModelConfig(encoder, decoder, "cpu"),
            sizing=Sizing(content_size=0, style_size=0),
            video=VideoSpec(smoothing, segment_seconds=args.segment_seconds),
        )
        start = time.perf_counter()
        summary = run_stylize(cfg)
        wall = time.perf_counter() - start
        assert summary["ok"] == 1, summary
        (row,) = pa.concat_tables([pq.read_table(p) for p in (out / "_manifest").glob("*.parquet")]).to_pylist()
        loss = style_losses(Path(row["output_uri"]), style, encoder, decoder)
        model_rate = frames / (row["model_ms"] / 1000)  # the actors' own time: decoding, model, encoding, upload
        print(
            f"{smoothing:>9g}  {wall:>7.1f}  {frames / wall:>8.1f}  {model_rate:>10.1f}  {row['flicker']:>7.3f}"
            f"  {loss:>10.4g}"
        )


if __name__ == "__main__":
    main()
