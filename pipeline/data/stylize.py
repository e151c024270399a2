"""The distributed stylization job: object storage -> Ray Data -> model actors -> outputs + manifest.

list -> read + decode (tasks) -> Stylizer (actors, GPU or CPU) -> encode + write (tasks)
                                                                    -> manifest (driver)
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import ray

from pipeline.config import StylizeConfig
from pipeline.data.bank import is_bank, load_bank, style_tensor
from pipeline.data.cluster import connect, input_blocks, jpeg_on_model, model_stage, unreserved_on_cpu
from pipeline.data.io_tasks import decode_inputs, write_outputs
from pipeline.data.listing import list_inputs, list_styles
from pipeline.data.manifest import ManifestWriter, finish_run, new_run_id
from pipeline.data.preview import write_preview
from pipeline.data.stages import Stylizer, Variant
from pipeline.errors import ConfigError, ImageError
from pipeline.model.checkpoint import load_encoder
from pipeline.model.sources import weight_uri
from pipeline.storage.cache import fetch

log = logging.getLogger(__name__)


def variants_for(cfg: StylizeConfig) -> list[Variant]:
    """Each style image (or bank entry) is its own output, unless --style-weights blends them into one."""
    weights = cfg.controls.style_weights
    if bank_of(cfg):
        bank = load_bank(bank_of(cfg), load_encoder(cfg.model.encoder).sha256)
        if weights is not None:
            raise ConfigError("--style-weights blends style images; with a style bank give each style as its own run")
        if bank.style_size != cfg.sizing.style_size:
            log.warning("the style bank was indexed at --style-size %d; its statistics are used", bank.style_size)
        return [Variant(style_id, ()) for style_id in bank.ids]
    styles = list_styles(cfg.styles)
    if weights is None:
        return [Variant(style_id, (uri,)) for style_id, uri in styles]
    if len(weights) != len(styles):
        raise ConfigError(f"--style-weights has {len(weights)} weights for {len(styles)} style images")
    key = ",".join(f"{sid}={w:g}" for (sid, _), w in zip(styles, weights, strict=True))
    blend_id = "blend-" + hashlib.sha256(key.encode()).hexdigest()[:8]
    return [Variant(blend_id, tuple(uri for _, uri in styles), tuple(weights))]


def bank_of(cfg: StylizeConfig) -> str | None:
    """The style bank, when --style names one (then it must be the only --style)."""
    banks = [ref for ref in cfg.styles if is_bank(ref)]
    if banks and len(cfg.styles) > 1:
        raise ConfigError("--style: a style bank must be the only --style")
    if banks and cfg.controls.preserve_color == "coral":
        raise ConfigError("--preserve-color coral recolours style images, which a bank no longer has; use luminance")
    return banks[0] if banks else None


def check_ready(cfg: StylizeConfig, variants: list[Variant]) -> None:
    """Fail before starting the cluster work if weights or style images are unusable."""
    fetch(*weight_uri(cfg.model.encoder), flag="--encoder")
    fetch(*weight_uri(cfg.model.decoder), flag="--decoder")
    for uri in sorted({u for v in variants for u in v.uris}):
        try:
            style_tensor(uri, cfg.sizing)
        except ImageError as exc:
            raise ImageError(f"style {uri}: {exc}") from None


def run_stylize(cfg: StylizeConfig) -> dict[str, Any]:
    """Run the job to the end; returns the run summary (also written to OUTPUT/_runs/)."""
    started = time.time()
    inputs = list_inputs(cfg.input, cfg.extensions, cfg.input_root)
    variants = variants_for(cfg)
    check_ready(cfg, variants)
    connect(cfg.address)
    run_id = cfg.run_id or new_run_id()
    batch = cfg.scale.batch_size
    style_ids = [v.style_id for v in variants]

    actor_args, threads = model_stage(cfg.model, cfg.scale)
    jpeg, jpeg_quality = jpeg_on_model(cfg.scale, actor_args, cfg.output)

    ds = ray.data.from_arrow(input_blocks(inputs, batch))
    ds = ds.map_batches(
        decode_inputs,
        fn_kwargs={"style_ids": style_ids, "output": cfg.output, "sizing": cfg.sizing, "jpeg_to_model": jpeg},
        batch_format="pyarrow",
        batch_size=batch,
        num_cpus=cfg.scale.io_cpus,
    )
    ds = ds.map_batches(
        Stylizer,
        fn_constructor_kwargs={
            "model": cfg.model,
            "controls": cfg.controls,
            "sizing": cfg.sizing,
            "variants": variants,
            "batch_size": batch,
            "bank": bank_of(cfg),
            "threads": threads,
            "jpeg_quality": jpeg_quality,
        },
        batch_format="pyarrow",
        batch_size=batch,
        **actor_args,
    )
    ds = ds.map_batches(
        write_outputs,
        fn_kwargs={"output": cfg.output},
        batch_format="pyarrow",
        batch_size=batch,
        num_cpus=cfg.scale.io_cpus,
    )

    manifest = ManifestWriter(cfg.output.uri, run_id, run_values(cfg))
    for rows in unreserved_on_cpu(ds, actor_args).iter_batches(batch_format="pyarrow", batch_size=None):
        manifest.add(rows)
    manifest.flush()

    summary = finish_run(
        manifest,
        cfg.output.uri,
        started,
        input=cfg.input,
        output=cfg.output.uri,
        inputs=inputs.num_rows,
        styles=style_ids,
    )
    if cfg.preview and manifest.samples:
        write_preview(manifest.samples, cfg.preview, cfg.sizing.max_pixels)
        summary["preview"] = cfg.preview
    return summary


def run_values(cfg: StylizeConfig) -> dict[str, Any]:
    """The manifest's per-run columns: the controls that shaped every output."""
    weights = cfg.controls.style_weights
    return {
        "alpha": cfg.controls.alpha,
        "style_weights": None if weights is None else ",".join(f"{w:g}" for w in weights),
        "preserve_color": cfg.controls.preserve_color,
        "precision": cfg.model.precision,
        "content_size": cfg.sizing.content_size,
        "max_side": cfg.sizing.max_side,
        "crop": cfg.sizing.crop,
        "format": cfg.output.format,
        "quality": cfg.output.quality,
    }
