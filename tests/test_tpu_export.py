"""Programs for a TPU, on any host: what lowers there, its shapes and shardings, and what "auto" picks.

No TPU is reachable here. ``jax.export`` with platforms=["tpu"] lowers a jitted function to the StableHLO a
TPU would compile (it neither compiles nor runs it), inside ``fff.target_platform("tpu")`` so that the FFF
and attention switches resolve for the TPU, not for this host. docs/tpu.md says what this shows and what
it does not (speed).

Shapes: the tiny presets, and the 1x11 shapes (H 768, V 32768, one tree of depth 11) with ONE layer, at a
batch of 2 x 128 tokens, bf16 compute as a TPU would run. The 16 layers are identical and lowering time
grows with their count (16 layers: 3-8 s per train-step export on 2 cores), so one layer shows what
sixteen do; the 16-layer export is marked slow. Everything is traced from abstract values
(``nnx.eval_shape`` of ``loop.init_state``): no parameter is allocated.
"""

from __future__ import annotations

import collections
import functools
import math
import re

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from ufbert_jax import fff, fff_math
from ufbert_jax.config import preset
from ufbert_jax.model import MaskedLM, resolve_attention_impl
from ufbert_jax.train import loop
from ufbert_jax.train import mesh as mesh_lib
from ufbert_jax.train.optim import OptimizerConfig
from ufbert_jax.train.steps import train_step

BATCH, SEQ_LEN, PREDICTIONS = 2, 128, 32
FORMS = ("masked", "conditional", "sparse", "auto")  # every FFF form that can run on a TPU
# preset -> overrides: the tiny presets as they are, the 1x11 shapes with one layer (see above)
MODELS = {"tiny-fff": {}, "tiny-dense": {}, "ultrafastbert-1x11": {"layers": 1}}
CASES = [(name, form) for name in ("tiny-fff", "ultrafastbert-1x11") for form in FORMS] + [
    ("tiny-dense", "auto")
]
SCALARS = [((), "float32")] * 3  # the step metrics: loss, accuracy, grad_norm
TRITON_CALL = "__gpu$xla.gpu.triton"


def model_config(name: str, form: str, **overrides):
    return preset(name, **{**MODELS.get(name, {}), "fff_impl": form, "dtype": "bfloat16", **overrides})


def export_for_tpu(fn, *args) -> jax.export.Exported:
    """`fn` jitted and lowered for a TPU, with every implementation resolved for the TPU."""
    with fff.target_platform("tpu"):
        return jax.export.export(jax.jit(fn), platforms=["tpu"])(*args)


def abstract_train_state(cfg):
    """(graphdef, state) of the trainer's model and optimizer (loop.init_state), as abstract values."""
    mesh = mesh_lib.make_mesh(1)
    model, optimizer = nnx.eval_shape(lambda: loop.init_state(cfg, OptimizerConfig(), 0, mesh))
    return nnx.split((model, optimizer))


def batch_avals(batch: int = BATCH, sharding=None) -> dict:
    """A microbatch as train_step takes it (steps.py): input_ids [B, S], positions and labels [B, P]."""
    shapes = {
        "input_ids": (batch, SEQ_LEN),
        "positions": (batch, PREDICTIONS),
        "labels": (batch, PREDICTIONS),
    }
    return {name: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=sharding) for name, shape in shapes.items()}


def step_program(graphdef, apply_update: bool):
    """train_step as a function of (state, batch, lr_multiplier) -> (the updated state, the step metrics)."""

    def step(state, batch, lr_multiplier):
        model, optimizer = nnx.merge(graphdef, state)
        step_metrics = train_step(model, optimizer, batch, lr_multiplier, apply_update=apply_update)
        return nnx.state((model, optimizer)), step_metrics

    return step


def avals(tree) -> list[tuple]:
    """[(shape, dtype name)] of a tree's leaves (dtype names, as RNG keys have no NumPy dtype)."""
    return [(tuple(leaf.shape), str(leaf.dtype)) for leaf in jax.tree.leaves(tree)]


@functools.cache
def export_train_step(name: str, form: str, apply_update: bool, layers: int | None = None):
    """(exported step, its input state) for a preset and FFF form; cached: "auto" is compared with masked."""
    cfg = model_config(name, form, **({} if layers is None else {"layers": layers}))
    graphdef, state = abstract_train_state(cfg)
    lr = jax.ShapeDtypeStruct((), jnp.float32)
    return export_for_tpu(step_program(graphdef, apply_update), state, batch_avals(), lr), state


# -- StableHLO profile: what the rule for "auto" on TPU rests on ------------------------------------------

_FUNCTION = re.compile(r"func\.func (?:public|private) @([\w.$-]+)\(")
_CALL = re.compile(r"call @([\w.$-]+)\(")
_TENSOR = re.compile(r"tensor<([^>]*)>")
_CONTRACTING = re.compile(r"contracting_dims = \[([\d, ]*)\] x")


def _dims(tensor_type: str) -> list[int]:
    return [int(d) for d in tensor_type.split("x")[:-1]]  # "2x768xbf16" -> [2, 768]


def _line_profile(line: str) -> collections.Counter:
    found = collections.Counter()
    if "stablehlo.dot_general" in line:
        lhs, _, out = (_dims(t) for t in _TENSOR.findall(line.rsplit(" : ", 1)[1]))
        contracted = math.prod(lhs[int(d)] for d in _CONTRACTING.search(line)[1].split(",") if d.strip())
        kind = "batched" if "batching_dims" in line else "dense"  # batched: one product per token (or head)
        found[f"{kind} dots"] += 1
        found[f"{kind} dot flops"] += 2 * math.prod(out) * contracted
    elif "stablehlo.gather" in line:
        found["gathers"] += 1
        found["gathered"] += math.prod(_dims(_TENSOR.findall(line)[-1]))  # elements of the result
    elif "stablehlo.scatter" in line:
        found["scatters"] += 1
    elif "stablehlo.custom_call" in line:
        found["custom calls"] += 1
    return found


def profile(module: str) -> dict[str, int]:
    """Counts of dense and batched dot_generals (with their FLOPs), gathers (with the gathered elements),
    scatters and custom calls in a StableHLO module, each function counted once per call from main."""
    own, calls, function = collections.defaultdict(collections.Counter), collections.defaultdict(list), None
    for line in module.splitlines():
        if match := _FUNCTION.search(line):
            function = match[1]
        elif function is not None:
            own[function] += _line_profile(line)
            calls[function] += _CALL.findall(line)

    @functools.cache
    def total(name: str) -> collections.Counter:
        return sum((total(callee) for callee in calls[name]), collections.Counter(own[name]))

    return dict(total("main"))


def layer_operands(tokens: int) -> list[jax.ShapeDtypeStruct]:
    """x [T, H], w_in [K, N, H], b_in [K, N], w_out [K, N, H] of a 1x11 FFF layer (H 768), bf16 weights."""
    hidden, nodes = 768, 4095
    return [
        jax.ShapeDtypeStruct((tokens, hidden), jnp.bfloat16),
        jax.ShapeDtypeStruct((1, nodes, hidden), jnp.bfloat16),
        jax.ShapeDtypeStruct((1, nodes), jnp.float32),
        jax.ShapeDtypeStruct((1, nodes, hidden), jnp.bfloat16),
    ]


def fff_layer_profiles(form: str, tokens: int) -> tuple[dict, dict]:
    """Profiles of one 1x11 FFF layer exported for a TPU: its forward, and a training step's forward and
    VJP (a cotangent g [T, H] as an input, so that nothing folds away as it would for the gradient of a sum).
    """
    operands = layer_operands(tokens)
    forward = functools.partial(fff.apply, impl=form)

    def training(x, w_in, b_in, w_out, g):
        y, vjp = jax.vjp(forward, x, w_in, b_in, w_out)
        return y, vjp(g)

    return (
        profile(export_for_tpu(forward, *operands).mlir_module()),
        profile(export_for_tpu(training, *operands, operands[0]).mlir_module()),
    )


# -- the programs a TPU would run ------------------------------------------------------------------------


@pytest.mark.parametrize("apply_update", [True, False], ids=["update", "accumulate"])
@pytest.mark.parametrize(("name", "form"), CASES)
def test_train_step_exports_for_tpu(name, form, apply_update):
    exported, state = export_train_step(name, form, apply_update)
    assert exported.platforms == ("tpu",) and exported.nr_devices == 1
    lr = jax.ShapeDtypeStruct((), jnp.float32)
    assert avals(exported.in_avals) == avals((state, batch_avals(), lr))
    state_out, step_metrics = jax.tree.unflatten(exported.out_tree, exported.out_avals)
    assert avals(state_out) == avals(state)  # the loop donates the state and feeds it back
    assert sorted(step_metrics) == ["accuracy", "grad_norm", "loss"]
    assert avals(step_metrics) == SCALARS
    assert exported.in_shardings_jax() == (None,) * len(exported.in_avals)  # one device: no sharding
    module = exported.mlir_module()
    assert "custom_call" not in module  # plain XLA: no CPU custom call, no GPU kernel
    if form == "auto" and name != "tiny-dense":  # "auto" on a TPU is the masked program, op for op
        assert module == export_train_step(name, "masked", apply_update)[0].mlir_module()


@pytest.mark.parametrize("head", ["encoder", "mlm"])
@pytest.mark.parametrize(("name", "form"), CASES)
def test_forward_exports_for_tpu(name, form, head):
    cfg = model_config(name, form)
    model = nnx.eval_shape(lambda: MaskedLM(cfg, nnx.Rngs(0)))
    model.eval()
    graphdef, state = nnx.split(model.encoder if head == "encoder" else model)
    tokens = jax.ShapeDtypeStruct((BATCH, SEQ_LEN), jnp.int32)

    def forward(state, token_ids, attention_mask):
        return nnx.merge(graphdef, state)(token_ids, attention_mask)

    exported = export_for_tpu(forward, state, tokens, tokens)
    assert avals(exported.in_avals) == avals((state, tokens, tokens))
    want = (
        ((BATCH, SEQ_LEN, cfg.hidden), "bfloat16")
        if head == "encoder"
        else ((BATCH, SEQ_LEN, cfg.vocab_size), "float32")
    )
    assert avals(exported.out_avals) == [want]
    assert "custom_call" not in exported.mlir_module()


@functools.cache
def built_tiny_train_state():
    """The trainer's tiny-fff model and optimizer, built for real on a one-device mesh (once: 2-4 s)."""
    return loop.init_state(model_config("tiny-fff", "auto"), OptimizerConfig(), 0, mesh_lib.make_mesh(1))


@pytest.mark.parametrize("apply_update", [True, False], ids=["update", "accumulate"])
def test_data_parallel_step_exports_with_the_batch_sharded(apply_update):
    """The trainer's placement on a 4-device abstract mesh: init_state's partition specs, batch on "data".

    An AbstractMesh needs no devices, so this runs in-process on a one-device host (no forced host devices).
    The tiny state is built for real once on a one-device mesh, to read the specs init_state gives it.
    """
    model, optimizer = built_tiny_train_state()
    graphdef, state = nnx.split((model, optimizer))
    mesh = AbstractMesh((4,), ("data",), axis_types=(AxisType.Auto,))
    replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    state = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=NamedSharding(mesh, a.sharding.spec)), state
    )
    batch, lr = batch_avals(4 * BATCH, data), jax.ShapeDtypeStruct((), jnp.float32, sharding=replicated)
    exported = export_for_tpu(step_program(graphdef, apply_update), state, batch, lr)

    assert exported.nr_devices == 4
    in_state, in_batch, in_lr = jax.tree.unflatten(exported.in_tree, exported.in_shardings_jax())[0]
    assert {s.spec for s in jax.tree.leaves(in_state)} == {P()}  # replicated (mesh.replicate)
    # lr_multiplier: replicated where the update reads it; the accumulating program never does, and drops it
    assert in_lr == (replicated if apply_update else None)
    assert {name: s.spec for name, s in in_batch.items()} == dict.fromkeys(batch, P("data"))
    assert {s.mesh.shape_tuple for s in jax.tree.leaves(exported.in_shardings_jax())} == {(("data", 4),)}
    module = exported.mlir_module()
    assert module.count('sdy.sharding<@mesh, [{"data"}, {}]>') == len(batch)  # each batch argument
    # Outputs: left to the partitioner (no out_shardings, as in train_step); at trace time nothing is on
    # "data": the updated state comes back whole and the metrics are all-reduced scalars.
    state_out, step_metrics = jax.tree.unflatten(exported.out_tree, exported.out_avals)
    assert avals(state_out) == avals(state) and avals(step_metrics) == SCALARS
    assert all("data" not in leaf.sharding.spec for leaf in exported.out_avals)


@pytest.mark.slow
@pytest.mark.parametrize("form", ["masked", "sparse"])  # "auto" on a TPU is masked
def test_full_1x11_train_step_exports_for_tpu(form):
    exported, state = export_train_step("ultrafastbert-1x11", form, True, layers=16)
    state_out, _ = jax.tree.unflatten(exported.out_tree, exported.out_avals)
    assert avals(state_out) == avals(state) and "custom_call" not in exported.mlir_module()


# -- forms that cannot run there, and the target platform ------------------------------------------------


@pytest.mark.parametrize(("form", "platform"), [("pallas", "tpu"), ("cpu", "tpu"), ("cpu", "gpu")])
def test_forms_that_cannot_run_there_are_refused(form, platform):
    with pytest.raises(ValueError, match=f"FFF impl '{form}' cannot run on platform '{platform}'"):
        fff.resolve_impl(form, platform)
    with fff.target_platform(platform), pytest.raises(ValueError, match=f"'{form}' cannot run on"):
        fff.resolve_impl(form)


def test_a_model_with_a_form_that_cannot_run_there_does_not_export():
    model = nnx.eval_shape(lambda: MaskedLM(model_config("tiny-fff", "pallas"), nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    tokens = jax.ShapeDtypeStruct((BATCH, SEQ_LEN), jnp.int32)
    with pytest.raises(ValueError, match="FFF impl 'pallas' cannot run on platform 'tpu'"):
        export_for_tpu(lambda state, ids: nnx.merge(graphdef, state)(ids), state, tokens)


def test_pallas_still_runs_in_the_interpreter_on_cpu():
    assert fff.resolve_impl("pallas", "cpu") is not None  # the interpret-mode kernel tests need it


def test_unknown_target_platform_is_refused():
    with pytest.raises(ValueError, match="unknown target platform 'TPU v4'"):
        fff.target_platform("TPU v4")


def test_target_platform_is_part_of_the_jit_cache_key():
    """One jitted function traced for a GPU, then exported for a TPU: traced again, for the TPU."""
    forward, operands = jax.jit(functools.partial(fff.apply, impl="auto")), layer_operands(256)
    with fff.target_platform("gpu"):
        assert "pallas_call" in str(forward.trace(*operands).jaxpr)
    with fff.target_platform("tpu"):
        exported = jax.export.export(forward, platforms=["tpu"])(*operands)
    assert "custom_call" not in exported.mlir_module()  # a reused GPU trace would fail to lower here


def test_target_platform_gpu_exports_the_compiled_pallas_kernel():
    """The target platform reaches the kernels: "auto" for a GPU lowers Triton, not Pallas' interpreter."""
    device = jax.sharding.AbstractDevice(device_kind="NVIDIA H200", num_cores=None, platform="cuda")
    unchecked = [jax.export.DisabledSafetyCheck.custom_call(TRITON_CALL)]
    forward = jax.jit(functools.partial(fff.apply, impl="auto"))
    with (
        fff.target_platform("cuda"),
        jax.sharding.use_abstract_mesh(AbstractMesh((1,), ("x",), abstract_device=device)),
    ):
        exported = jax.export.export(forward, platforms=["cuda"], disabled_checks=unchecked)(
            *layer_operands(256)
        )
    assert TRITON_CALL in exported.mlir_module()


# -- "auto" on a TPU ---------------------------------------------------------------------------------------


def test_auto_on_tpu_is_the_masked_form():
    assert fff.resolve_impl("auto", "tpu") is fff_math.masked
    with fff.target_platform("tpu"):
        assert fff.resolve_impl("auto") is fff_math.masked
        assert resolve_attention_impl("auto", model_config("ultrafastbert-1x11", "auto")) == "xla"


def test_hlo_behind_the_tpu_rule():
    """What fff.py's TPU note rests on, per token of a 1x11 layer (K 1, N 4095, D 11, H 768)."""
    tokens, nodes, levels, hidden = 256, 4095, 12, 768
    per_token = lambda found, key: found.get(key, 0) / tokens  # noqa: E731
    masked, masked_training = fff_layer_profiles("masked", tokens)
    # masked: two dense products of 2 N H FLOPs a token (six in training); gathers only of one routing bit
    # per level below the root; no scatter
    assert masked["dense dots"] == 2 and per_token(masked, "dense dot flops") == 4 * nodes * hidden
    assert masked_training["dense dots"] == 6
    assert per_token(masked_training, "dense dot flops") == 12 * nodes * hidden
    for found in (masked, masked_training):
        assert (
            per_token(found, "gathered") < levels and "batched dots" not in found and "scatters" not in found
        )
    for form in ("conditional", "sparse"):
        forward, training = fff_layer_profiles(form, tokens)
        # 2 (D+1) rows of H gathered a token (and D+1 biases), 2 (D+1) per-token dots, no dense product
        assert "dense dots" not in forward and per_token(forward, "gathered") == levels * (2 * hidden + 1)
        assert forward["batched dots"] == 2 * levels
        assert per_token(forward, "batched dot flops") == 4 * levels * hidden  # 341x fewer than masked
        assert "dense dots" not in training
        assert training["scatters"] == 3 * levels  # scatter-adds of the weight-gradient rows per level
    sparse_training = fff_layer_profiles("sparse", tokens)[1]
    assert per_token(sparse_training, "gathered") == levels * (4 * hidden + 1)  # the backward's rows too
    assert fff_layer_profiles("auto", tokens) == (masked, masked_training)
