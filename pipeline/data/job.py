"""The one wiring of the batch jobs, as their data-flow diagram reads:

    listing -> map_batches(decode_inputs) -> map_batches(StyleModel, actor pool) -> map_batches(write_outputs)
            -> manifest rows, streamed back to the driver

On GPU actors the decoding and writing stages are CPU tasks beside them. On CPU actors the
three stages run in turn inside each actor (`OnOneNode`): the actors hold the node's cores, and
tasks decoding and encoding beside them would only take cores from their threads.

`adain stylize` and `adain augment` differ only in what they hand it: the plan (which styles
and alphas per input, which writer, when an existing output counts as done) and the styles.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import ray
from ray.data import ActorPoolStrategy

from pipeline.config import ModelConfig, Scale, Sizing
from pipeline.data.cluster import fetched, jpeg_on_model, model_stage, rows_as_made
from pipeline.data.decode import decode_inputs, start_reading
from pipeline.data.listing import Inputs
from pipeline.data.model_actor import StyleModel
from pipeline.data.plan import Plan
from pipeline.data.styles import StyleSet
from pipeline.data.writers import encode_outputs, write_outputs, written
from pipeline.imaging import device_codec
from pipeline.storage.index import ObjectIndex


@dataclass(frozen=True)
class Stages:
    """How the stages run: the model and its precision, image sizes, the cluster's share."""

    model: ModelConfig
    sizing: Sizing
    scale: Scale
    preserve_color: str | None = None


def stylized_rows(
    inputs: Inputs, plan: Plan, styles: StyleSet, stages: Stages, existing: ObjectIndex | None
) -> Iterator[pa.Table]:
    """Run the pipeline over `inputs` (a listed table, or a list file's Dataset); yields manifest rows as
    outputs are written. `existing` is `plan.existing()`, listed once by the job (on the driver): no
    request per output to ask if it is done."""
    batch = stages.scale.batch_size
    actor_args, threads = model_stage(stages.model, stages.scale, inputs.blocks(batch))
    jpeg_in, jpeg_quality = jpeg_on_model(stages.scale, actor_args, plan.writer.output, device_codec.unavailable())
    io = {"batch_format": "pyarrow", "num_cpus": stages.scale.io_cpus}

    concurrency = stages.scale.io_concurrency

    ds = inputs.dataset(batch, stages.scale.io_cpus)
    decoding = {
        "plan": plan,
        "sizing": stages.sizing,
        "jpeg_to_model": jpeg_in,
        "existing": None if existing is None else ray.put(existing),
        "concurrency": concurrency,
    }
    model = {
        "model": stages.model,
        "styles": ray.put(styles),
        "sizing": stages.sizing,
        "batch_size": batch,
        "preserve_color": stages.preserve_color,
        "threads": threads,
        "jpeg_quality": jpeg_quality,
    }
    writing = {"writer": plan.writer, "encoded": jpeg_quality is not None, "concurrency": concurrency}
    if "num_gpus" not in actor_args and plan.writer.rows_per_call is None:
        stages_in_one = {"decoding": decoding, "model": model, "writing": writing}
        in_one = actor_args | {"compute": two_calls(actor_args["compute"])}
        ds = ds.map_batches(OnOneNode, fn_constructor_kwargs=stages_in_one, batch_size=batch, **io | in_one)
    else:
        ds = ds.map_batches(decode_inputs, fn_kwargs=decoding, batch_size=batch, **io)
        ds = ds.map_batches(StyleModel, fn_constructor_kwargs=model, batch_size=batch, **io | actor_args)
        ds = ds.map_batches(write_outputs, fn_kwargs=writing, batch_size=plan.writer.rows_per_call or batch, **io)
    yield from rows_as_made(ds, actor_args)


def two_calls(pool: ActorPoolStrategy) -> ActorPoolStrategy:
    """`pool` with two calls at once per actor, on threads (`OnOneNode` gives one at a time the cores)."""
    return ActorPoolStrategy(size=pool.max_size, max_concurrent_calls_per_actor=2, enable_true_multi_threading=True)


class OnOneNode:
    """The decoding, model and writing stages in turn, in one CPU model actor: no process hops,
    and no task competing with the model's threads for the node's cores.

    The actor takes two calls at once, and one call at a time has its cores (one, by default:
    `cluster.cpu_pool`): while one decodes, stylizes and encodes (the decoding and encoding on
    as many threads as the model's), the other's reads or uploads wait on the network
    (`--io-concurrency` requests in flight each). So the object store's latency is hidden, and
    the actor's own work never runs beside its model's threads."""

    def __init__(self, *, decoding: dict[str, Any], model: dict[str, Any], writing: dict[str, Any]) -> None:
        self.plan, self.sizing, self.jpeg_to_model = decoding["plan"], decoding["sizing"], decoding["jpeg_to_model"]
        self.existing = fetched(decoding["existing"])  # fetched once here, not again for every batch
        self.writer, self.encoded, self.concurrency = writing["writer"], writing["encoded"], writing["concurrency"]
        self.model = StyleModel(**model)
        self.cores = ThreadPoolExecutor(model["threads"] or 1, thread_name_prefix="adain-cores")
        self.cpu_turn = threading.Lock()

    def __call__(self, batch: pa.Table) -> pa.Table:
        reading = start_reading(batch, self.plan, self.existing, self.concurrency, self.sizing.max_pixels)
        reading.wait()  # the network's time: the other call has the cores meanwhile
        with self.cpu_turn:
            decoded = reading.decoded(self.sizing, self.jpeg_to_model, self.cores)
            stylized = self.model(decoded).to_pylist()
            if not self.encoded:
                encode_outputs(stylized, self.writer.output, self.cores)
        return written(stylized, self.writer, True, self.concurrency)
