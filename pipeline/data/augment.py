"""Dataset augmentation: N stylized copies of every input image, for training sets.

    lock -> list inputs -> keep new and changed ones -> read + decode + draw N styles
    (tasks) -> Augmenter (actors: one content encoding serves all N styles) -> write files
    or tar shards (tasks) -> manifest, state and run log (driver) -> unlock

Styles and alphas are drawn from (seed, input path), so re-runs and other machines draw
the same. A run processes only inputs that are new, or whose size or modification time
changed, since the runs recorded in OUTPUT/_state/inputs.parquet. A run that died (its
driver killed) is not recorded: the next run takes over its lock if its process is gone
from this host, and keeps the outputs it finished (`skipped` rows), making only the rest.
"""

from __future__ import annotations

import functools
import io
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import torch

from pipeline.config import AugmentConfig, ModelConfig, Sizing
from pipeline.data.bank import bank_from_images, is_bank, load_bank
from pipeline.data.cluster import (
    connect,
    input_blocks,
    jpeg_on_model,
    model_stage,
    set_threads,
    unreserved_on_cpu,
)
from pipeline.data.io_tasks import elapsed_ms, write_outputs, write_shard
from pipeline.data.listing import list_inputs, list_styles
from pipeline.data.manifest import ROW_SCHEMA, ManifestWriter, finish_run, new_run_id, table_bytes
from pipeline.data.resume import decode_unfinished, release_if_dead
from pipeline.data.stages import ModelIO, device_stream, shape_groups
from pipeline.errors import ConfigError
from pipeline.model.checkpoint import load_encoder
from pipeline.model.functional import cat_stats
from pipeline.model.loader import load_model
from pipeline.model.sources import weight_uri
from pipeline.storage.cache import fetch
from pipeline.storage.keys import augmented_key
from pipeline.storage.lock import acquire, release
from pipeline.storage.uri import exists, join, read_bytes, write_bytes

AUGMENT_ROW_SCHEMA = pa.schema([*ROW_SCHEMA, ("alpha", pa.float32()), ("shard_member", pa.string())])
AUGMENT_RUN_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("per_image", pa.int32()),
        ("seed", pa.int64()),
        ("alpha_range", pa.string()),
        ("precision", pa.string()),
        ("content_size", pa.int32()),
        ("format", pa.string()),
    ]
)
STATE_SCHEMA = pa.schema(
    [("rel_path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()), ("run_id", pa.string())]
)


class Augmenter:
    """A model actor holding the networks and every style's statistics (from a bank, or
    encoded once from the style images)."""

    def __init__(
        self,
        model: ModelConfig,
        styles: str,
        sizing: Sizing,
        batch_size: int,
        luminance: bool = False,
        threads: int | None = None,
        jpeg_quality: int | None = None,
    ) -> None:
        set_threads(threads)
        self.model = load_model(model)
        self.io = ModelIO(self.model.device, sizing, jpeg_quality)
        self.per_call = functools.partial(self.model.images_per_call, batch_size=batch_size)
        self.luminance = luminance
        if is_bank(styles):
            self.bank = load_bank(styles, self.model.identity["encoder_sha256"])
        else:
            self.bank = bank_from_images(self.model, list_styles((styles,)), sizing)

    def __call__(self, batch: pa.Table) -> pa.Table:
        decoded = batch.to_pylist()
        pixels: dict[tuple[int, int], tuple[bytes, bool, float]] = {}
        with device_stream(self.model.device):
            for height, width, chunk in shape_groups(decoded, self.per_call):
                pixels.update(self._run(decoded, chunk, height, width))
        identity = self.model.identity
        out_rows = []
        for i, row in enumerate(decoded):
            base = {k: row[k] for k in ("input_uri", "rel_path", "key", "width", "height", "decode_ms")} | identity
            for k, (style, alpha) in enumerate(zip(row["styles"], row["alphas"], strict=True)):
                item = base | {"style": style, "alpha": alpha}
                if style in (row.get("done") or ()):  # written by a run that died: kept as it is
                    out_rows.append(item | {"status": "skipped"})
                elif row["error"] is not None:
                    out_rows.append(item | {"status": "error", "error": row["error"]})
                else:
                    image, jpeg, model_ms = pixels[(i, k)]
                    output = {"pixels": image, "jpeg": jpeg, "model_ms": model_ms}
                    out_rows.append(item | {"status": "pending"} | output)
        schema = pa.schema([*AUGMENT_ROW_SCHEMA, ("key", pa.string()), ("pixels", pa.binary()), ("jpeg", pa.bool_())])
        return pa.Table.from_pylist(out_rows, schema=schema)

    def _run(self, decoded: list[dict], chunk: list[int], height: int, width: int) -> dict:
        """Stylize one same-shape chunk with each row's drawn styles and alphas: {(row, k): output}."""
        start = time.perf_counter()
        content, chunk = self.io.batch(decoded, chunk, height, width)
        if not chunk:
            return {}
        rows = [decoded[i] for i in chunk]
        per_image = len(rows[0]["styles"])
        styles, alphas = [], []
        for k in range(per_image):
            styles.append(cat_stats([self.bank.stats(row["styles"][k]) for row in rows]))
            alphas.append(torch.tensor([row["alphas"][k] for row in rows]).view(-1, 1, 1, 1))
        outputs = self.model.stylize_each(content, styles, alphas, self.luminance)
        model_ms = elapsed_ms(start) / (len(chunk) * per_image)
        results = {}
        for k, out in enumerate(outputs):
            files, jpeg = self.io.outputs(out)
            results.update({(i, k): (data, jpeg, model_ms) for i, data in zip(chunk, files, strict=True)})
        return results


def changed_inputs(inputs: pa.Table, state_uri: str) -> tuple[pa.Table, dict[str, int]]:
    """The inputs that are new or changed since the recorded runs (with a `new` column: never
    recorded), and the counts of each kind."""
    if not exists(state_uri):
        new = pa.array([True] * inputs.num_rows, pa.bool_())
        return inputs.append_column("new", new), {"new": inputs.num_rows, "changed": 0, "unchanged": 0}
    state = pq.read_table(io.BytesIO(read_bytes(state_uri)))
    stamps = zip(state.column("size").to_pylist(), state.column("mtime_ns").to_pylist(), strict=True)
    seen = dict(zip(state.column("rel_path").to_pylist(), stamps, strict=True))
    kinds, counts = [], {"new": 0, "changed": 0, "unchanged": 0}
    columns = (inputs.column(name).to_pylist() for name in ("rel_path", "size", "mtime_ns"))
    for rel, size, mtime in zip(*columns, strict=True):
        if rel not in seen:
            kind = "new"
        elif size is not None and (size, mtime) != seen[rel]:
            kind = "changed"
        else:
            kind = "unchanged"
        counts[kind] += 1
        kinds.append(kind)
    inputs = inputs.append_column("new", pa.array([kind == "new" for kind in kinds], pa.bool_()))
    return inputs.filter(pa.array([kind != "unchanged" for kind in kinds], pa.bool_())), counts


def record_state(state_uri: str, processed: pa.Table, run_id: str) -> None:
    """Add this run's inputs to the state, replacing older records of the same paths."""
    rows = processed.select(["rel_path", "size", "mtime_ns"]).append_column(
        "run_id", pa.array([run_id] * processed.num_rows, pa.string())
    )
    if exists(state_uri):
        old = pq.read_table(io.BytesIO(read_bytes(state_uri))).cast(STATE_SCHEMA)
        old = old.filter(pc.invert(pc.is_in(old.column("rel_path"), rows.column("rel_path"))))
        rows = pa.concat_tables([old, rows.cast(STATE_SCHEMA)])
    write_bytes(state_uri, table_bytes(rows.cast(STATE_SCHEMA)))


def style_ids_of(cfg: AugmentConfig) -> list[str]:
    """The sorted style ids to draw from, checking the bank's encoder up front."""
    if is_bank(cfg.styles):
        return sorted(load_bank(cfg.styles, load_encoder(cfg.model.encoder).sha256).ids)
    return sorted(style_id for style_id, _ in list_styles((cfg.styles,)))


def run_augment(cfg: AugmentConfig) -> dict[str, Any]:
    """Run one (incremental) augmentation; returns the run log (also OUTPUT/_runs/RUN_ID.json)."""
    started = time.time()
    run_id = cfg.run_id or new_run_id()
    lock = join(cfg.output.uri, "_lock.json")
    release_if_dead(lock)
    lease = acquire(lock, run_id, cfg.lock_ttl_s)
    try:
        return _run(cfg, run_id, started)
    finally:
        release(lease)


def _run(cfg: AugmentConfig, run_id: str, started: float) -> dict[str, Any]:
    style_ids = style_ids_of(cfg)
    if cfg.per_image > len(style_ids):
        raise ConfigError(f"--per-image {cfg.per_image}: there are only {len(style_ids)} styles")
    fetch(*weight_uri(cfg.model.encoder), flag="--encoder")
    fetch(*weight_uri(cfg.model.decoder), flag="--decoder")
    state_uri = join(cfg.output.uri, "_state", "inputs.parquet")
    todo, kinds = changed_inputs(list_inputs(cfg.input, cfg.extensions, cfg.input_root), state_uri)
    manifest = ManifestWriter(
        cfg.output.uri, run_id, run_values(cfg), row_schema=AUGMENT_ROW_SCHEMA, run_schema=AUGMENT_RUN_SCHEMA
    )
    failed: set[str] = set()
    if todo.num_rows:
        connect(cfg.address)
        batch = cfg.scale.batch_size
        actor_args, threads = model_stage(cfg.model, cfg.scale)
        jpeg, jpeg_quality = jpeg_on_model(cfg.scale, actor_args, cfg.output)
        ds = ray.data.from_arrow(input_blocks(todo, batch)).map_batches(
            decode_unfinished,
            fn_kwargs={
                "output": None if cfg.shards else cfg.output,
                "style_ids": style_ids,
                "per_image": cfg.per_image,
                "alpha_range": cfg.alpha_range,
                "seed": cfg.seed,
                "sizing": cfg.sizing,
                "jpeg_to_model": jpeg,
            },
            batch_format="pyarrow",
            batch_size=batch,
            num_cpus=cfg.scale.io_cpus,
        )
        ds = ds.map_batches(
            Augmenter,
            fn_constructor_kwargs={
                "model": cfg.model,
                "styles": cfg.styles,
                "sizing": cfg.sizing,
                "batch_size": batch,
                "luminance": cfg.preserve_color == "luminance",
                "threads": threads,
                "jpeg_quality": jpeg_quality,
            },
            batch_format="pyarrow",
            batch_size=batch,
            **actor_args,
        )
        if cfg.shards:
            ds = ds.map_batches(
                write_shard,
                fn_kwargs={"output": cfg.output, "run_id": run_id},
                batch_format="pyarrow",
                batch_size=cfg.shard_size,
                num_cpus=cfg.scale.io_cpus,
            )
        else:
            ds = ds.map_batches(
                write_outputs,
                fn_kwargs={"output": cfg.output, "naming": augmented_key},
                batch_format="pyarrow",
                batch_size=batch,
                num_cpus=cfg.scale.io_cpus,
            )
        for rows in unreserved_on_cpu(ds, actor_args).iter_batches(batch_format="pyarrow", batch_size=None):
            manifest.add(rows)
            errors = pc.equal(rows.column("status"), "error")
            failed.update(rows.filter(errors).column("rel_path").to_pylist())
    manifest.flush()
    # Inputs with any failed output stay unrecorded, so the next run tries them again.
    done = pc.invert(pc.is_in(todo.column("rel_path"), pa.array(sorted(failed), pa.string())))
    record_state(state_uri, todo.filter(done), run_id)
    return finish_run(
        manifest,
        cfg.output.uri,
        started,
        status="succeeded",
        input=cfg.input,
        styles=cfg.styles,
        output=cfg.output.uri,
        inputs_new=kinds["new"],
        inputs_changed=kinds["changed"],
        inputs_unchanged=kinds["unchanged"],
        per_image=cfg.per_image,
        seed=cfg.seed,
    )


def run_values(cfg: AugmentConfig) -> dict[str, Any]:
    low, high = cfg.alpha_range
    return {
        "per_image": cfg.per_image,
        "seed": cfg.seed,
        "alpha_range": f"{low:g},{high:g}",
        "precision": cfg.model.precision,
        "content_size": cfg.sizing.content_size,
        "format": cfg.output.format,
    }
