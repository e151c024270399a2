"""The videos' model stage: `VideoModel`, an actor for `Dataset.map_batches`, one segment at a time.

For each SEGMENT row (data/rows.py) it decodes the segment's lead-in and warms the temporal smoothing
up on it (`warm_up`: encoded only), so that segments stylized on different actors join as if stylized
in one run; then it decodes the segment's frames in batches, stylizes them in each style still to make
(`stylize_frames`), encodes each style's frames to a part (`SegmentWriter`, a local file first) and
uploads it with a JSON sidecar, written last: a part counts as there when its sidecar is. One PART row
per (segment, style) comes out; a part an earlier run made of the same version of the video (its sidecar's
`source`, `uri.version`), with the same settings, is reused.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from pipeline.config import VideoSpec
from pipeline.data.model_actor import NOT_FINITE, StyleModel, device_stream
from pipeline.data.rows import ERROR, OK, PART_SCHEMA, SKIPPED, elapsed_ms
from pipeline.errors import VideoError, describe
from pipeline.imaging import video
from pipeline.imaging.codec import fit
from pipeline.imaging.device_codec import prepare_on_device
from pipeline.imaging.tensors import batch_to_pixels, pixels_to_batch
from pipeline.imaging.video_device import DeviceDecodeUnavailable, device_frames
from pipeline.imaging.video_write import Flicker, SegmentWriter, batched
from pipeline.model.functional import Stats
from pipeline.storage.streams import readable_source, upload_file
from pipeline.storage.uri import read_bytes, write_bytes

log = logging.getLogger(__name__)


def sidecar(part: str) -> str:
    """The part's JSON sidecar: what it is and how it was made, written after it."""
    return f"{part}.json"


def segment_of(row: dict[str, Any]) -> video.Segment:
    return video.Segment(
        row["segment"], row["start"], row["end"], row["seek"], row["first_pts"], row["end_pts"], tuple(row["pts"])
    )


def lead_in_of(row: dict[str, Any]) -> video.Segment | None:
    if row["lead_start"] is None:
        return None
    start, end = row["lead_start"], row["start"]
    return video.Segment(row["segment"], start, end, row["lead_seek"], row["lead_first_pts"], row["first_pts"], ())


def encoder_info(row: dict[str, Any]) -> video.VideoInfo:
    """The VideoInfo that `SegmentWriter` reads: the video's rate, time base and rotation (the rest is not
    needed to encode, and not carried in the row)."""
    return video.VideoInfo(
        0, 0, Fraction(row["rate"]), row["frames"], row["duration"], row["rotation"], "", 0,
        Fraction(row["time_base"]), (), (), (),
    )  # fmt: skip


class VideoModel(StyleModel):
    """A model actor for video segments: StyleModel's networks and style statistics, and the video settings."""

    def __init__(self, *, video_spec: VideoSpec, **model: Any) -> None:
        super().__init__(**model)
        self.spec, self.batch_size, self.sizing = video_spec, model["batch_size"], model["sizing"]
        self.device_decoding = True  # until TorchCodec, asked to (--video-decoder device), cannot
        sizing = self.sizing
        self.made_with = {
            **self.model.identity,
            "smoothing": video_spec.temporal_smoothing,
            "lead_in": video_spec.lead_in,
            "quality": video_spec.quality,
            "sizing": [sizing.content_size, sizing.crop, sizing.max_side],
            "luminance": self.luminance,
        }

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = [part for row in batch.to_pylist() for part in self._segment(row)]
        return pa.Table.from_pylist(rows, schema=PART_SCHEMA)

    def _segment(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        base = {k: row[k] for k in ("input_uri", "rel_path", "frames", "duration", "segments", "segment", "decode_ms")}
        base |= {"fps": None if row["rate"] is None else float(Fraction(row["rate"]))} | self.model.identity
        items = list(zip(row["styles"], row["alphas"], row["targets"], strict=True))
        if row["segment"] is None:  # the video's own row: outputs there already, or it cannot be read
            return [
                base | {"style": style, "target": target, "status": SKIPPED if done else ERROR, "error": row["error"]}
                for (style, _, target), done in zip(items, row["done"], strict=True)
            ]
        base["segment_frames"] = row["end"] - row["start"]
        rows, todo = [], []
        for (style, alpha, target), part, done in zip(items, row["parts"], row["parts_done"], strict=True):
            item = base | {"style": style, "target": target, "part": part}
            made = self._reused(part, self._recipe(alpha, row["source"])) if done else None
            if made is not None:
                rows.append(item | made | {"status": OK, "reused": True, "model_ms": 0.0})
            else:
                todo.append((item, alpha))
        if todo:
            rows += self._make(row, todo)
        return rows

    def _recipe(self, alpha: float, source: str) -> dict[str, Any]:
        """What a part is made of and with, as its sidecar records it: the settings, the alpha and the
        video's version (a file since replaced under its name must not lend its parts)."""
        return self.made_with | {"alpha": alpha, "source": source}

    def _reused(self, part: str, recipe: dict[str, Any]) -> dict[str, Any] | None:
        """What an earlier run's sidecar says of the part, if it was made as this run would make it (`recipe`)."""
        try:
            made = json.loads(read_bytes(sidecar(part)))
        except Exception:  # unreadable: made again
            return None
        if made.get("made_with") != recipe:
            return None
        return {k: made[k] for k in ("width", "height", "flicker_in", "flicker_out")}

    def _make(self, row: dict[str, Any], todo: list[tuple[dict[str, Any], float]]) -> list[dict[str, Any]]:
        """Stylize the segment in each style of `todo` (items and alphas), upload the parts: their PART rows."""
        start = time.perf_counter()
        styles = [self._style(item["style"]) for item, _ in todo]
        try:
            with (
                tempfile.TemporaryDirectory(prefix="adain-parts-") as tmp,
                readable_source(row["input_uri"]) as source,
                device_stream(self.model.device),
                contextlib.ExitStack() as stack,
            ):
                info, paths = encoder_info(row), [Path(tmp, f"{k}.mp4") for k in range(len(todo))]
                writers = [stack.enter_context(SegmentWriter(p, info, self.spec.quality)) for p in paths]
                flickers = [Flicker() for _ in todo]
                previous = self._warm_up(source, lead_in_of(row))
                pts = iter(row["pts"])
                for content, inputs in self._frames(source, segment_of(row)):
                    outputs, previous = self._stylize(content, styles, [alpha for _, alpha in todo], previous)
                    stamps = [next(pts) for _ in inputs]
                    for writer, flicker, images in zip(writers, flickers, outputs, strict=True):
                        for image, stamp in zip(images, stamps, strict=True):
                            writer.write(image, stamp)
                        flicker.add(inputs, images)
                stack.close()  # every part encoded to the end before it is uploaded
                height, width = (side // 2 * 2 for side in outputs[0][0].shape[:2])
                made = []
                for (item, alpha), path, flicker in zip(todo, paths, flickers, strict=True):
                    upload_file(str(path), item["part"])
                    figures = {"width": width, "height": height}
                    figures |= {"flicker_in": flicker.sums[0], "flicker_out": flicker.sums[1]}
                    note = figures | {"made_with": self._recipe(alpha, row["source"])}
                    write_bytes(sidecar(item["part"]), json.dumps(note).encode())
                    made.append(item | figures | {"status": OK, "reused": False})
        except Exception as exc:  # the segment's failure, whatever it is, is that segment's error
            made = [item | {"status": ERROR, "error": describe(exc), "reused": False} for item, _ in todo]
        model_ms = elapsed_ms(start) / len(todo)
        return [item | {"model_ms": model_ms} for item in made]

    def _style(self, style_id: str) -> Stats:
        i = self.index[style_id]
        return self.mean[i : i + 1], self.std[i : i + 1]

    def _frames(self, source: Any, segment: video.Segment) -> Iterator[tuple[torch.Tensor, list[np.ndarray]]]:
        """The segment's frames a batch at a time, sized for the model: on the model's device, and as
        uint8 frames (the flicker's inputs). Decoded by TorchCodec on the device with `--video-decoder
        device` where it can decode this video, else (the default) by PyAV on the CPU."""
        if self.spec.decoder == "device" and self.device_decoding:
            try:
                for frames in device_frames(source, segment, self.model.device, self.batch_size):
                    plan = self.sizing.content_plan(frames.shape[-1], frames.shape[-2])
                    content = torch.stack([prepare_on_device(frame, plan) for frame in frames])
                    yield content, list(batch_to_pixels(content))
                return
            except DeviceDecodeUnavailable as exc:  # before any frame: the CPU decodes the whole segment
                log.warning("--video-decoder device: TorchCodec cannot decode here (%s); decoding with PyAV", exc)
                self.device_decoding = False
        for frames in batched(video.frames(source, segment, self.sizing.max_pixels), self.batch_size):
            inputs = [np.asarray(self._fit(frame)) for frame in frames]
            yield pixels_to_batch(np.stack(inputs), self.model.device), inputs

    def _fit(self, frame: np.ndarray) -> Image.Image:
        sizing = self.sizing
        return fit(Image.fromarray(frame), sizing.content_size, sizing.crop, sizing.max_pixels, sizing.max_side)

    def _warm_up(self, source: Any, lead: video.Segment | None) -> Stats | None:
        """The smoothed content statistics after the lead-in: where this segment's smoothing starts."""
        previous = None
        if lead is None or not self.spec.temporal_smoothing:
            return previous
        for content, _ in self._frames(source, lead):
            for chunk in self._chunks(content):
                previous = self.model.warm_up(chunk, self.spec.temporal_smoothing, previous)
        return previous

    def _chunks(self, content: torch.Tensor) -> list[torch.Tensor]:
        step = self.per_call(content.shape[2], content.shape[3])
        return [content[i : i + step] for i in range(0, len(content), step)]

    def _stylize(
        self, content: torch.Tensor, styles: list[Stats], alphas: list[float], previous: Stats | None
    ) -> tuple[list[np.ndarray], Stats | None]:
        """One batch of consecutive frames (N, 3, H, W) in each style: per style (N, H, W, 3) uint8, and the
        smoothed statistics to carry on (the same whatever the style)."""
        outputs: list[list[np.ndarray]] = [[] for _ in styles]
        s = self.spec.temporal_smoothing
        for chunk in self._chunks(content):
            carried = previous
            for k, (style, alpha) in enumerate(zip(styles, alphas, strict=True)):
                out, carried = self.model.stylize_frames(chunk, style, alpha, s, previous, self.luminance)
                if not torch.isfinite(out).all():  # written, it would be a black frame
                    raise VideoError(NOT_FINITE)
                outputs[k].extend(batch_to_pixels(out))
            previous = carried
        return [np.stack(images) for images in outputs], previous
