"""Lays out Triton's model repository in the pod: `python prepare_models.py TARGET`.

Runs as the Triton pod's init container, from the project image, which carries the repository as
package data (`callisto.deploy/triton`). So the models served are always those of the project
image's version, and the Triton image only carries the libraries the models import.

CALLISTO_TRITON_MODELS (comma-separated) names the models to copy (default: all).
CALLISTO_TRITON_DEVICE=gpu rewrites the copies for a GPU: every llama.cpp layer offloaded
(`n_gpu_layers` -1) and the embedder on CUDA. CALLISTO_TRITON_LLM_INSTANCES sets how many llm
instances (one llama.cpp context each, so one stream each) run at once. A setting that is not
where this expects it stops the pod with an error instead of silently serving otherwise.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import callisto.deploy

SOURCE = Path(callisto.deploy.__file__).resolve().parent / "triton"

# model -> (parameter, value on a GPU)
GPU_PARAMETERS = {
    "llm": ("n_gpu_layers", "-1"),
    "embedder": ("device", "cuda"),
}


def set_parameter(config: str, key: str, value: str) -> str:
    """`config` (a config.pbtxt) with the string parameter `key` set to `value`."""
    pattern = re.compile(
        r'(key:\s*"' + re.escape(key) + r'"\s*value:\s*\{\s*string_value:\s*")[^"]*(")'
    )
    updated, count = pattern.subn(lambda match: match.group(1) + value + match.group(2), config)
    if count != 1:
        raise SystemExit(f"parameter {key!r} found {count} times, expected once")
    return updated


def set_instance_count(config: str, count: int) -> str:
    """`config` with its one instance group's `count` set."""
    pattern = re.compile(r"(instance_group\s*\[\s*\{\s*count:\s*)\d+")
    updated, found = pattern.subn(lambda match: match.group(1) + str(count), config)
    if found != 1:
        raise SystemExit(f"instance_group count found {found} times, expected once")
    return updated


def prepare(target: Path, models: list[str], gpu: bool, llm_instances: int | None) -> None:
    for name in models:
        source = SOURCE / name
        if not (source / "config.pbtxt").is_file():
            raise SystemExit(f"no model {name!r} in {SOURCE}")
        shutil.copytree(
            source, target / name, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
        )
        config = target / name / "config.pbtxt"
        if gpu and name in GPU_PARAMETERS:
            key, value = GPU_PARAMETERS[name]
            config.write_text(set_parameter(config.read_text(), key, value))
        if name == "llm" and llm_instances is not None:
            config.write_text(set_instance_count(config.read_text(), llm_instances))
        print(f"model {name} ready in {target / name}", flush=True)


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: prepare_models.py TARGET")
    listed = os.environ.get("CALLISTO_TRITON_MODELS", "")
    models = [name.strip() for name in listed.split(",") if name.strip()] or sorted(
        path.name for path in SOURCE.iterdir() if (path / "config.pbtxt").is_file()
    )
    device = os.environ.get("CALLISTO_TRITON_DEVICE", "cpu")
    if device not in {"cpu", "gpu"}:
        raise SystemExit(f"CALLISTO_TRITON_DEVICE={device!r}: expected cpu or gpu")
    instances = os.environ.get("CALLISTO_TRITON_LLM_INSTANCES", "")
    if instances and not (instances.isdigit() and int(instances) >= 1):
        raise SystemExit(f"CALLISTO_TRITON_LLM_INSTANCES={instances!r}: expected a count >= 1")
    prepare(Path(sys.argv[1]), models, device == "gpu", int(instances) if instances else None)


if __name__ == "__main__":
    main()
