"""Dataset augmentation: N stylized copies of every input image, for training sets.

    lock -> list inputs -> keep new and changed ones -> job.stylized_rows (plan: N styles drawn
    per input; decode; model: one content encoding serves all N; write files or tar shards)
    -> manifest, state and run log (driver) -> unlock

Styles and alphas are drawn from (seed, input path), so re-runs and other machines draw
the same. A run processes only inputs that are new, or whose size or modification time
changed, since the runs recorded in OUTPUT/_state/inputs.parquet. A run that died (its
driver killed) is not recorded: the next run takes over its lock if its process is gone
from this host, and keeps the outputs it finished (`skipped` rows), making only the rest.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import AugmentConfig
from pipeline.data.listing import Inputs, list_inputs, split_videos
from pipeline.data.manifest import (
    ManifestWriter,
    conformed,
    finish_run,
    new_run_id,
    read_table,
    run_values,
    table_bytes,
)
from pipeline.data.plan import RESUME_NEVER, RESUME_NEW_INPUTS, DrawnStyles, Plan
from pipeline.data.preflight import check_address, check_styles, check_weights, enough_styles
from pipeline.data.progress import Progress
from pipeline.data.rows import AUGMENT_ROW_SCHEMA, AUGMENT_RUN_SCHEMA, ERROR, OK
from pipeline.data.writers import FileWriter, ShardWriter, record_shards, remove_orphan_shards
from pipeline.errors import StorageError, counted, describe
from pipeline.storage.keys import augmented_key, output_room
from pipeline.storage.lock import LeaseKeeper, acquire, release, release_if_dead
from pipeline.storage.uri import check_writable, exists, join, write_bytes

if TYPE_CHECKING:
    from pipeline.data.styles import StyleSet

log = logging.getLogger(__name__)

STATE_SCHEMA = pa.schema(
    [("rel_path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()), ("run_id", pa.string())]
)


def read_state(state_uri: str) -> pa.Table:
    """The inputs the finished runs recorded (STATE_SCHEMA): none where there is no state yet, or,
    with a one-line warning, where it cannot be read or is not a state (truncated, edited by hand):
    every input is then new, its outputs already there are kept, and the state is written anew."""
    if not exists(state_uri):
        return STATE_SCHEMA.empty_table()
    try:
        return conformed(read_table(state_uri), STATE_SCHEMA)
    except (KeyError, pa.ArrowException) as exc:
        log.warning("%s: unreadable state (%s); every input counts as new this run", state_uri, describe(exc))
        return STATE_SCHEMA.empty_table()


def changed_inputs(inputs: pa.Table, state: pa.Table) -> tuple[pa.Table, dict[str, int]]:
    """The inputs that are new or changed since the recorded runs (`state`, with a `new` column:
    never recorded), and the counts of each kind."""
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


def record_state(state_uri: str, state: pa.Table, processed: pa.Table, run_id: str) -> None:
    """The state read at the start (`state`) with this run's inputs added, replacing older records of the same paths."""
    rows = processed.select(["rel_path", "size", "mtime_ns"]).append_column(
        "run_id", pa.array([run_id] * processed.num_rows, pa.string())
    )
    older = state.filter(pc.invert(pc.is_in(state.column("rel_path"), rows.column("rel_path"))))
    write_bytes(state_uri, table_bytes(pa.concat_tables([older, rows.cast(STATE_SCHEMA)])))


def run_augment(cfg: AugmentConfig) -> dict[str, Any]:
    """Run one (incremental) augmentation; returns the run log (also OUTPUT/_runs/RUN_ID.json)."""
    started = time.time()
    run_id = cfg.run_id or new_run_id()
    lock = join(cfg.output.uri, "_lock.json")
    # What a user can get wrong fails first, in seconds: inputs, output, weights, cluster.
    room = None if cfg.shards else output_room(cfg.output.uri, augment=True)  # tar members take long names
    listed, videos = split_videos(list_inputs(cfg.input, cfg.extensions, cfg.input_root, cfg.output.uri, room))
    if videos.num_rows:  # training sets are images: a video's frames as copies would be another job
        left_out = counted(len(videos), "video")
        log.warning("left out %s: augment makes training images; stylize videos with adain stylize", left_out)
    check_writable(cfg.output.uri)
    check_weights(cfg.model)
    check_address(cfg.address)
    check_styles((cfg.styles,), per_image=cfg.per_image, sizing=cfg.sizing, encoder=cfg.model.encoder)
    release_if_dead(lock)
    lease = acquire(lock, run_id, cfg.lock_ttl_s)
    try:
        with LeaseKeeper(lease):
            summary = _run(cfg, listed, run_id, started)
        if lease.lost is not None:
            raise StorageError(f"{lease.lost} while this run worked; check both runs' outputs")
        return summary
    finally:
        release(lease)


def _run(cfg: AugmentConfig, listed: pa.Table, run_id: str, started: float) -> dict[str, Any]:
    state_uri = join(cfg.output.uri, "_state", "inputs.parquet")
    state = read_state(state_uri)
    todo, kinds = changed_inputs(listed, state)
    # torch and Ray load only now: a mistake found above is reported before they take seconds to import.
    from pipeline.data.cluster import connect_while

    def encode_styles() -> StyleSet:
        from pipeline.data.styles import augment_styles  # torch loads here, while Ray starts
        from pipeline.model.loader import check_networks

        check_networks(cfg.model.encoder, cfg.model.decoder)
        return augment_styles(cfg.styles, cfg.model, cfg.sizing)

    styles = connect_while(cfg.address, encode_styles) if todo.num_rows else encode_styles()
    enough_styles(cfg.per_image, len(styles.ids))  # a bank's, counted only now
    from pipeline.data.job import Stages, stylized_rows

    low, high = cfg.alpha_range
    job_values = {"per_image": cfg.per_image, "seed": cfg.seed, "alpha_range": f"{low:g},{high:g}"}
    manifest = ManifestWriter(
        cfg.output.uri,
        run_id,
        run_values(cfg.model, cfg.sizing, cfg.output, **job_values),
        row_schema=AUGMENT_ROW_SCHEMA,
        run_schema=AUGMENT_RUN_SCHEMA,
    )
    failed: set[str] = set()
    shards: set[str] = set()
    if todo.num_rows:
        drawn = DrawnStyles(styles.ids, cfg.per_image, cfg.alpha_range, cfg.seed)
        if cfg.shards:
            plan = Plan(drawn, ShardWriter(cfg.output, run_id, cfg.shard_size), RESUME_NEVER)
        else:  # a run that died left outputs of new inputs: those are kept
            plan = Plan(drawn, FileWriter(cfg.output, augmented_key), RESUME_NEW_INPUTS)
        stages = Stages(cfg.model, cfg.sizing, cfg.scale, cfg.preserve_color)
        if cfg.shards and (orphans := remove_orphan_shards(cfg.output.uri)):
            log.warning("removed %s of a run that died before it finished", counted(orphans, "shard"))
        progress = Progress(todo.num_rows * cfg.per_image, "augment")
        for rows in stylized_rows(Inputs.of(todo), plan, styles, stages, plan.existing()):
            manifest.add(rows)
            progress.update(manifest.counts)
            failed.update(rows.filter(pc.equal(rows.column("status"), ERROR)).column("rel_path").to_pylist())
            shards.update(rows.filter(pc.equal(rows.column("status"), OK)).column("output_uri").to_pylist())
        progress.close()
    manifest.close()
    if cfg.shards:
        record_shards(cfg.output.uri, sorted(shards))
    # Inputs with any failed output stay unrecorded, so the next run tries them again.
    done = pc.invert(pc.is_in(todo.column("rel_path"), pa.array(sorted(failed), pa.string())))
    record_state(state_uri, state, todo.filter(done), run_id)
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
        style_sources=styles.source_map(),
    )
