"""Devices and hosts: starting jax.distributed, the 1-D data-parallel mesh, and placing state and batches.

One code path from one device to many hosts: a 1-D mesh over every device (axis "data"), parameters and
optimizer state replicated, each microbatch sharded on "data". Each process reads its own slice of the data
(shard_index = process index) and contributes its rows to the global batch
(jax.make_array_from_process_local_data); jit inserts the gradient all-reduce.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P


def initialize_distributed(config: ml_collections.ConfigDict) -> None:
    """jax.distributed.initialize() when config.distributed.initialize is set (multi-host runs).

    Empty coordinator_address / num_processes 0 / process_id -1 leave the value to JAX's cluster
    auto-detection (SLURM, Open MPI, TPU pods, Kubernetes); set all three on a plain cluster.
    """
    dist = config.distributed
    if not dist.initialize:
        return
    options = {
        "coordinator_address": dist.coordinator_address or None,
        "num_processes": dist.num_processes or None,
        "process_id": dist.process_id if dist.process_id >= 0 else None,
    }
    jax.distributed.initialize(**{k: v for k, v in options.items() if v is not None})


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
    """A 1-D data-parallel mesh over the first `num_devices` devices (0: all, across every process)."""
    devices = jax.devices()
    if num_devices:
        if not 1 <= num_devices <= len(devices):
            raise ValueError(f"num_devices={num_devices}; expected 0 (all) or 1..{len(devices)}")
        devices = devices[:num_devices]
    return jax.make_mesh((len(devices),), ("data",), axis_types=(AxisType.Auto,), devices=devices)


def replicate(mesh: jax.sharding.Mesh, *nodes: nnx.Module | nnx.Optimizer) -> None:
    """Places every array of the given NNX objects on all devices of the mesh, in place."""
    replicated = NamedSharding(mesh, P())
    for node in nodes:
        nnx.update(node, jax.device_put(nnx.state(node), replicated))


def global_batch(mesh: jax.sharding.Mesh, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's rows [B / processes, ...] -> global arrays [B, ...] sharded on the "data" axis."""
    sharding = NamedSharding(mesh, P("data"))
    return {name: jax.make_array_from_process_local_data(sharding, array) for name, array in local.items()}


def all_processes(value: Any) -> list:
    """[value of process 0, value of process 1, ...] for a JSON-serialisable value (iterator states)."""
    if jax.process_count() == 1:
        return [value]
    encoded = np.frombuffer(json.dumps(value).encode(), np.uint8)
    lengths = multihost_utils.process_allgather(np.array([encoded.size]))  # [processes, 1]
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[: encoded.size] = encoded
    gathered = multihost_utils.process_allgather(padded)  # [processes, max length]
    return [json.loads(row[: int(n)].tobytes()) for row, n in zip(gathered, lengths[:, 0], strict=True)]
