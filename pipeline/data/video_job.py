"""Videos in the batch job, as their data-flow diagram reads:

    listing -> map_batches(plan_segments) -> one segment a block -> map_batches(VideoModel, actor pool)
            -> part rows, streamed to the driver -> (every part of a video and style in) join task
            -> manifest rows

A CPU task probes each video and cuts it into keyframe-aligned segments (`video.segments`): the units
of work, which the model actors take one at a time, a long video's on many actors at once. Each
(segment, style) is encoded to a part object at a deterministic key, OUTPUT/_parts/STYLE/REL.mp4/...,
never named like an output; when all of a video's parts are in, a Ray task joins them in order with the
source's audio (`video_write.join`) into the target, which appears only then, whole, and deletes them.
A re-run skips videos whose .mp4 is there and reuses the parts a killed run uploaded of the same version
of the video (`uri.version`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import ray

from pipeline.config import VideoSpec
from pipeline.data.cluster import fetched, input_blocks, model_stage, rows_as_made
from pipeline.data.job import Stages
from pipeline.data.plan import RESUME_NEVER, Plan, plan_inputs
from pipeline.data.rows import ERROR, OK, ROW_SCHEMA, SEGMENT_SCHEMA, SKIPPED, elapsed_ms
from pipeline.data.styles import StyleSet
from pipeline.data.video_model import VideoModel, sidecar
from pipeline.errors import StorageError, describe
from pipeline.imaging import video, video_write
from pipeline.storage.index import ObjectIndex
from pipeline.storage.streams import download_file, readable_source, upload_file
from pipeline.storage.uri import check_inside, delete, is_remote, join, resolve, version

PARTS = "_parts"  # OUTPUT/_parts/: the encoded segments of videos not yet joined


def part_uri(output: str, target: str, segment: video.Segment) -> str:
    """Where a segment of `target` (OUTPUT/STYLE/REL.mp4) is kept until the join: named by its index and
    frame range, so that a run cut into other segments never takes it for one of its own."""
    return join(parts_folder(output, target), f"{segment.index:05d}-{segment.start}-{segment.end}.mp4")


def parts_folder(output: str, target: str) -> str:
    """The folder of `target`'s parts, OUTPUT/_parts/STYLE/REL.mp4/."""
    return join(output, PARTS, target[len(output.rstrip("/")) + 1 :])


def refused(todo: dict[str, list], output: str) -> list[dict[str, Any]]:
    """Take out of `todo` each output that a link inside the output would write outside it (its target
    or its parts): their error rows. Checked once, here: the parts' uploads and the joiner know no output."""
    rows = []
    for k in reversed(range(len(todo["targets"]))):
        target = todo["targets"][k]
        try:
            check_inside(target, output)
            check_inside(join(parts_folder(output, target), "part"), output)
        except StorageError as exc:
            rows.append({name: [todo[name].pop(k)] for name in todo} | {"error": f"writing {target}: {exc}"})
    return rows


def part_index(plan: Plan) -> ObjectIndex | None:
    """The parts there already (their sidecars), listed once per run; none with --overwrite."""
    if plan.resume == RESUME_NEVER:
        return None
    return ObjectIndex.build(join(plan.writer.output.uri, PARTS), (".json",))


def plan_segments(
    batch: pa.Table,
    *,
    plan: Plan,
    spec: VideoSpec,
    max_pixels: int,
    existing: ObjectIndex | ray.ObjectRef | None = None,
    parts: ObjectIndex | ray.ObjectRef | None = None,
) -> Iterator[pa.Table]:
    """The listed videos -> SEGMENT rows: each video probed and cut into segments, one row per segment
    with the styles still to make; the done styles, or an unreadable video's, in one row of the video's.
    Each row is a table of its own: a block of its own (see `video_rows`), for any actor to take."""
    existing = fetched(existing)
    parts = fetched(parts)
    for video_plan in plan_inputs(batch, plan, existing):
        for row in _segments(video_plan, plan, spec, max_pixels, parts):
            yield pa.Table.from_pylist([row], schema=SEGMENT_SCHEMA)


def _segments(
    planned: dict[str, Any], plan: Plan, spec: VideoSpec, max_pixels: int, parts: ObjectIndex | None
) -> list[dict[str, Any]]:
    def items(done: bool) -> dict[str, list]:
        keep = [k for k, d in enumerate(planned["done"]) if d == done]
        return {name: [planned[name][k] for k in keep] for name in ("styles", "alphas", "targets", "done")}

    base = {k: planned[k] for k in ("input_uri", "rel_path", "mtime_ns")}
    rows = [base | items(True)] if any(planned["done"]) else []
    todo = items(False)
    rows += [base | row for row in refused(todo, plan.writer.output.uri)]
    if not todo["styles"]:
        return rows
    start = time.perf_counter()
    try:
        made_from = version(planned["input_uri"])  # before it is read: a file replaced meanwhile lends no part
        with readable_source(planned["input_uri"]) as source:
            info = video.probe(source, max_pixels)
    except Exception as exc:  # whatever the file does, it is this video's error
        return [*rows, base | todo | {"error": describe(exc), "decode_ms": elapsed_ms(start)}]
    cut = video.segments(info, spec.segment_seconds)
    shared = {
        "rate": str(info.fps),
        "time_base": str(info.time_base),
        "rotation": info.rotation,
        "frames": info.frames,
        "duration": info.duration,
        "segments": len(cut),
        "source": made_from,
        "decode_ms": elapsed_ms(start),
    }
    for segment in cut:
        uris = [part_uri(plan.writer.output.uri, target, segment) for target in todo["targets"]]
        done = [False] * len(uris) if parts is None else parts.written_since([sidecar(u) for u in uris], None)
        lead = video.lead_in(info, segment, spec.lead_in)
        rows.append(
            base | todo | shared | {
                "parts": uris,
                "parts_done": done,
                "segment": segment.index,
                "start": segment.start,
                "end": segment.end,
                "seek": segment.seek,
                "first_pts": segment.first_pts,
                "end_pts": segment.end_pts,
                "pts": list(segment.pts),
                "lead_start": None if lead is None else lead.start,
                "lead_seek": None if lead is None else lead.seek,
                "lead_first_pts": None if lead is None else lead.first_pts,
            }
        )  # fmt: skip
    return rows


def join_parts(parts: list[str], source: str, target: str) -> tuple[float, str | None]:
    """Fetch a video's parts, join them in order with the source's audio into `target` (a local file
    first, then uploaded whole), delete the parts: (ms, None), or (ms, the error)."""
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="adain-join-") as tmp:
            local = []
            for i, part in enumerate(parts):
                if is_remote(part):
                    download_file(part, os.path.join(tmp, f"{i:05d}.mp4"))
                    local.append(os.path.join(tmp, f"{i:05d}.mp4"))
                else:
                    local.append(resolve(part)[1])
            joined = Path(tmp, "joined.mp4")
            with readable_source(source) as opened:
                video_write.join(local, opened, joined)
            upload_file(str(joined), target)
        for part in parts:
            delete(sidecar(part))  # the sidecar first: a part without one is never reused
            delete(part)
        if not is_remote(parts[0]):
            _remove_empty(os.path.dirname(resolve(parts[0])[1]))
    except Exception as exc:
        return elapsed_ms(start), f"joining the segments into {target}: {describe(exc)}"
    return elapsed_ms(start), None


def _remove_empty(folder: str) -> None:
    """A local video's parts folder, once empty (its parents stay: other videos' parts may be there)."""
    with contextlib.suppress(OSError):
        os.rmdir(folder)


class Joins:
    """The driver's side of the videos: part rows gathered per (video, style); when all are in, a join
    task (or the error of a part that failed), collected without waiting as rows stream in.
    `planned` and `done` count frames (and a video that has none to make as one)."""

    def __init__(self, cpus: float) -> None:
        self.join = ray.remote(join_parts).options(num_cpus=cpus)
        self.waiting: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.running: dict[ray.ObjectRef, list[dict[str, Any]]] = {}
        self.planned = self.done = 0

    def add(self, parts: pa.Table) -> list[dict[str, Any]]:
        """Take a batch of PART rows; returns the manifest rows of the videos finished since the last call."""
        finished = []
        for part in parts.to_pylist():
            if part["segment"] is None:  # the video's own row: skipped or error
                self.planned, self.done = self.planned + 1, self.done + 1
                finished.append(manifest_row([part]))
                continue
            got = self.waiting.setdefault((part["input_uri"], part["style"]), [])
            self.planned += 0 if got else part["frames"]
            self.done += part["segment_frames"]
            got.append(part)
            if len(got) < part["segments"]:
                continue
            del self.waiting[(part["input_uri"], part["style"])]
            got.sort(key=lambda p: p["segment"])
            if any(p["status"] == ERROR for p in got):
                finished.append(manifest_row(got))
            else:
                self.running[self.join.remote([p["part"] for p in got], part["input_uri"], part["target"])] = got
        return finished + self.collect(timeout=0)

    def collect(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """The manifest rows of the joins finished (within `timeout`; None: all of them)."""
        if not self.running:
            return []
        ready, _ = ray.wait(list(self.running), num_returns=len(self.running), timeout=timeout)
        rows = []
        for ref in ready:
            got = self.running.pop(ref)
            try:
                write_ms, error = ray.get(ref)
            except Exception as exc:  # the task's worker died
                write_ms, error = None, f"joining the segments into {got[0]['target']}: {describe(exc)}"
            rows.append(manifest_row(got, write_ms, error))
        return rows


def manifest_row(parts: list[dict[str, Any]], write_ms: float | None = None, error: str | None = None) -> dict:
    """The manifest row of a (video, style) from its part rows (in segment order) and its join."""
    first = parts[0]
    row = {k: first[k] for k in ROW_SCHEMA.names if k in first}
    row |= {"width": first["width"], "height": first["height"], "write_ms": write_ms}
    row["model_ms"] = sum(p["model_ms"] or 0.0 for p in parts)
    failed = [p for p in parts if p["status"] == ERROR]
    if first["status"] == SKIPPED:
        return row | {"status": SKIPPED, "output_uri": first["target"]}
    if failed or error:
        reason = failed[0]["error"] if failed else error
        if failed and first["segment"] is not None and first["segments"] > 1:
            reason = f"segment {failed[0]['segment']} of {first['segments']}: {reason}"
        return row | {"status": ERROR, "error": reason}
    change_in, change_out = (sum(p[k] for p in parts) for k in ("flicker_in", "flicker_out"))
    flicker = change_out / change_in if change_in else None
    return row | {"status": OK, "output_uri": first["target"], "flicker": flicker}


def video_rows(
    videos: pa.Table, plan: Plan, styles: StyleSet, stages: Stages, spec: VideoSpec, joins: Joins,
    existing: ObjectIndex | None,
) -> Iterator[pa.Table]:  # fmt: skip
    """Run the videos' pipeline over the listed `videos`; yields manifest rows as videos are joined
    (and empty tables as parts come in, for `joins`' frame counts to be shown)."""
    actor_args, threads = model_stage(stages.model, stages.scale)
    io = {"batch_format": "pyarrow", "num_cpus": stages.scale.io_cpus}
    planning = {
        "plan": plan,
        "spec": spec,
        "max_pixels": stages.sizing.max_pixels,
        "existing": None if existing is None else ray.put(existing),
        "parts": ray.put(part_index(plan)),
    }
    model = {
        "model": stages.model,
        "styles": ray.put(styles),
        "sizing": stages.sizing,
        "batch_size": stages.scale.batch_size,
        "preserve_color": stages.preserve_color,
        "threads": threads,
        "video_spec": spec,
    }
    ds = ray.data.from_arrow(input_blocks(videos, 1))
    # Every table a stage returns is a block of its own (rows here are a few KiB): a video's segments
    # go to the model actors one by one, a long video's to many at once.
    ds.context.target_max_block_size = 1
    ds = ds.map_batches(plan_segments, fn_kwargs=planning, batch_size=1, **io)
    ds = ds.map_batches(VideoModel, fn_constructor_kwargs=model, batch_size=1, **io | actor_args)
    for parts in rows_as_made(ds, actor_args):
        yield pa.Table.from_pylist(joins.add(parts), schema=ROW_SCHEMA)
    yield pa.Table.from_pylist(joins.collect(), schema=ROW_SCHEMA)
