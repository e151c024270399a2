"""Video frames decoded on the model's device by TorchCodec (NVDEC on a GPU): `--video-decoder device`.

TorchCodec decodes video with the machine's own FFmpeg libraries (its wheels bundle none for video).
Where they are missing, or the device has no decoder for the video, opening fails at once with
`DeviceDecodeUnavailable`, and the jobs decode with PyAV on the CPU (video.py), the default.
Frames are counted as video.py counts them, in presentation order ("exact" seeking).
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import torch

from pipeline.errors import describe
from pipeline.imaging.video import Segment


class DeviceDecodeUnavailable(Exception):
    """TorchCodec cannot decode this video on this device; the CPU path can still try."""


def device_frames(source: str | io.BufferedReader, segment: Segment, device: torch.device, batch: int) -> Iterator:
    """The segment's frames as (N, 3, H, W) uint8 tensors on `device`, `batch` frames at a time."""
    try:
        from torchcodec.decoders import VideoDecoder

        decoder = VideoDecoder(source, device=str(device), seek_mode="exact")
        frames = decoder.metadata.num_frames
    except Exception as exc:  # no FFmpeg libraries, no device decoder for the codec, a CPU-only build
        raise DeviceDecodeUnavailable(describe(exc)) from None
    if frames is not None and frames < segment.end:
        raise DeviceDecodeUnavailable(f"TorchCodec counts {frames} frames, the probe {segment.end} or more")
    for start in range(segment.start, segment.end, batch):
        yield decoder.get_frames_in_range(start, min(start + batch, segment.end)).data
