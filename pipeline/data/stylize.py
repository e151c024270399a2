"""The distributed stylization job: every input in every style, written once, with a manifest.

    list inputs -> styles reduced to statistics (driver) -> images: job.stylized_rows (decode -> model -> write)
                                                         -> videos: video_job.video_rows (segments -> model -> join)
                -> manifest and run summary (driver)

Outputs go to OUTPUT/STYLE_ID/REL_PATH.FORMAT (videos: .mp4); an output already there is kept, unless
`--overwrite`.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from pipeline.config import StylizeConfig
from pipeline.data.listing import Inputs, find_inputs, split_videos
from pipeline.data.manifest import ManifestWriter, finish_run, new_run_id, run_values
from pipeline.data.plan import RESUME_EXISTING, RESUME_NEVER, EveryStyle, Plan
from pipeline.data.preflight import check_address, check_styles, check_weights
from pipeline.data.preview import write_preview
from pipeline.data.progress import Progress
from pipeline.data.writers import VIDEO_FORMAT, FileWriter
from pipeline.errors import ConfigError
from pipeline.storage.keys import output_key, output_room
from pipeline.storage.uri import check_writable

if TYPE_CHECKING:
    from pipeline.data.styles import StyleSet


def check_videos(videos: pa.Table | None, cfg: StylizeConfig) -> None:
    """Refuse controls that the run's videos cannot take."""
    if videos is not None and videos.num_rows and cfg.controls.preserve_color == "coral":
        raise ConfigError("--preserve-color coral recolours the styles to each image; for videos use luminance or none")


def run_stylize(cfg: StylizeConfig) -> dict[str, Any]:
    """Run the job to the end; returns the run summary (also written to OUTPUT/_runs/)."""
    started = time.time()
    # What a user can get wrong fails first, in seconds: inputs, output, weights, cluster, styles.
    room = output_room(cfg.output.uri, augment=False)
    found = find_inputs(cfg.input, cfg.extensions, cfg.input_root, exclude=cfg.output.uri, room=room)
    check_writable(cfg.output.uri)
    check_weights(cfg.model)
    check_address(cfg.address)
    check_styles(cfg.styles, cfg.controls, sizing=cfg.sizing, encoder=cfg.model.encoder)
    # A listing's videos take the videos' pipeline (a list file's are split off as Ray Data reads it).
    images, videos = split_videos(found) if isinstance(found, pa.Table) else (found, None)
    check_videos(videos, cfg)
    # torch and Ray load only now: a mistake above is reported before they take seconds to import.
    from pipeline.data.cluster import connect_while

    def encode_styles() -> StyleSet:
        from pipeline.data.styles import stylize_styles  # torch loads here, while Ray starts
        from pipeline.model.loader import check_networks

        check_networks(cfg.model.encoder, cfg.model.decoder)
        return stylize_styles(cfg.styles, cfg.controls, cfg.model, cfg.sizing)

    styles = connect_while(cfg.address, encode_styles)
    from pipeline.data.job import Stages, stylized_rows
    from pipeline.data.video_job import Joins, video_rows

    inputs = Inputs.of(images)  # a list file: read by Ray Data, its names resolved on hashes
    if inputs.videos is not None:
        videos = inputs.videos
        check_videos(videos, cfg)
    has_videos = videos is not None and videos.num_rows > 0
    run_id = cfg.run_id or new_run_id()
    plan = Plan(
        EveryStyle(styles.ids, cfg.controls.alpha),
        FileWriter(cfg.output, output_key),
        RESUME_NEVER if cfg.output.overwrite else RESUME_EXISTING,
    )
    weights = cfg.controls.style_weights
    job_values = {
        "alpha": cfg.controls.alpha,
        "style_weights": None if weights is None else ",".join(f"{w:g}" for w in weights),
        "preserve_color": cfg.controls.preserve_color,
    }
    manifest = ManifestWriter(cfg.output.uri, run_id, run_values(cfg.model, cfg.sizing, cfg.output, **job_values))
    stages = Stages(cfg.model, cfg.sizing, cfg.scale, cfg.controls.preserve_color)
    # Images count in outputs, videos in frames, added to the total as the videos are probed.
    unit = "frames" if not inputs.count else "images+frames" if has_videos else "images"
    progress = Progress(inputs.count * len(styles.ids), "stylize", unit)
    existing = plan.existing()  # one listing of the outputs, images' and videos', for both pipelines
    if inputs.count:
        for rows in stylized_rows(inputs, plan, styles, stages, existing):
            manifest.add(rows)
            progress.update(manifest.counts)
    if has_videos:
        images_done = sum(manifest.counts.values())
        joins = Joins(cfg.scale.io_cpus)
        video_plan = replace(plan, writer=replace(plan.writer, extension=VIDEO_FORMAT))
        planned = 0
        for rows in video_rows(videos, video_plan, styles, stages, cfg.video, joins, existing):
            manifest.add(rows)
            progress.grow(joins.planned - planned)
            planned = joins.planned
            progress.update(manifest.counts, images_done + joins.done)
    manifest.close()
    progress.close()

    summary = finish_run(
        manifest,
        cfg.output.uri,
        started,
        input=cfg.input,
        output=cfg.output.uri,
        inputs=inputs.count + (videos.num_rows if has_videos else 0),
        styles=list(styles.ids),
        style_sources=(sources := styles.source_map()),
    )
    samples = [s for s in manifest.samples if not s[2].endswith(f".{VIDEO_FORMAT}")]  # the sheet shows images
    if cfg.preview and samples:
        write_preview(samples, sources, cfg.preview, cfg.sizing.max_pixels)
        summary["preview"] = cfg.preview
    return summary
