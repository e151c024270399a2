"""Jobs on a local Ray that advertises a GPU the machine does not have: the GPU actor-pool path
(two calls at once on threads, JPEGs decoded and encoded on the model's device) with the model
on the CPU. Run as `python -m tests.fake_gpu VGG DECODER SRC STYLE OUT`, in a process of its own,
since the tests' session Ray has no GPU and one process holds one Ray. Prints one JSON line:
each run's summary counts and the model stage's Ray arguments.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ray

from pipeline.config import ModelConfig, OutputSpec, Scale, Sizing, StylizeConfig
from pipeline.data.cluster import jpeg_on_model, model_stage
from pipeline.data.stylize import run_stylize

# run name -> (ModelConfig.device, Scale.jpeg_codec): the CPU actor pool with JPEGs coded on the
# model's device, and the GPU pool as it runs by default (which codes them there too).
RUNS = {"cpu": ("cpu", "model"), "gpu-pool": ("auto", "auto")}


def main(vgg: str, decoder: str, src: str, style: str, out: str) -> None:
    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    report: dict = {}
    for name, (device, codec) in RUNS.items():
        cfg = StylizeConfig(
            input=src,
            styles=(style,),
            output=OutputSpec(str(Path(out) / name), "jpg", 90),
            model=ModelConfig(vgg, decoder, device),
            sizing=Sizing(content_size=32, style_size=32),
            scale=Scale(batch_size=4, jpeg_codec=codec),
        )
        pool, _ = model_stage(cfg.model, cfg.scale)
        summary = run_stylize(cfg)
        report[name] = {
            "ok": summary["ok"],
            "error": summary["error"],
            "num_gpus": pool.get("num_gpus"),
            "calls_per_actor": pool["compute"].max_concurrent_calls_per_actor,
            "jpeg_on_model": jpeg_on_model(cfg.scale, pool, cfg.output),
        }
    ray.shutdown()
    print(json.dumps(report))


if __name__ == "__main__":
    main(*sys.argv[1:6])
