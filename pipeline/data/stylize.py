"""The distributed stylization job: every input in every style, written once, with a manifest.

    list inputs -> styles reduced to statistics (driver) -> job.stylized_rows (decode -> model -> write)
                -> manifest and run summary (driver)

Outputs go to OUTPUT/STYLE_ID/REL_PATH.FORMAT; an output already there is kept, unless `--overwrite`.
"""

from __future__ import annotations

import time
from typing import Any

from pipeline.config import StylizeConfig
from pipeline.data.listing import Inputs, find_inputs
from pipeline.data.manifest import ManifestWriter, finish_run, new_run_id, run_values
from pipeline.data.plan import RESUME_EXISTING, RESUME_NEVER, EveryStyle, Plan
from pipeline.data.preflight import check_address, check_weights
from pipeline.data.preview import write_preview
from pipeline.data.progress import Progress
from pipeline.data.writers import FileWriter
from pipeline.storage.keys import output_key
from pipeline.storage.uri import check_writable


def run_stylize(cfg: StylizeConfig) -> dict[str, Any]:
    """Run the job to the end; returns the run summary (also written to OUTPUT/_runs/)."""
    started = time.time()
    # What a user can get wrong fails first, in seconds: inputs, output, weights, cluster, styles.
    found = find_inputs(cfg.input, cfg.extensions, cfg.input_root, exclude=cfg.output.uri)
    check_writable(cfg.output.uri)
    check_weights(cfg.model)
    check_address(cfg.address)
    # torch and Ray load only now: a mistake above is reported before they take seconds to import.
    from pipeline.data.cluster import connect
    from pipeline.data.job import Stages, stylized_rows
    from pipeline.data.styles import stylize_styles

    styles = stylize_styles(cfg.styles, cfg.controls, cfg.model, cfg.sizing)
    connect(cfg.address)
    inputs = Inputs.of(found)  # a list file: read by Ray Data, its names resolved on hashes
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
    progress = Progress(inputs.count * len(styles.ids), "stylize")
    for rows in stylized_rows(inputs, plan, styles, stages):
        manifest.add(rows)
        progress.update(manifest.counts)
    manifest.close()
    progress.close()

    summary = finish_run(
        manifest,
        cfg.output.uri,
        started,
        input=cfg.input,
        output=cfg.output.uri,
        inputs=inputs.count,
        styles=list(styles.ids),
        style_sources=(sources := styles.source_map()),
    )
    if cfg.preview and manifest.samples:
        write_preview(manifest.samples, sources, cfg.preview, cfg.sizing.max_pixels)
        summary["preview"] = cfg.preview
    return summary
