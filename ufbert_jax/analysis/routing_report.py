"""Routing analysis of a workdir on a text: routing.json, the figures and the printed table.

Shape legend: R rows, B batch (rows per step), S sequence, H hidden.

`analyze_workdir` loads the workdir's MaskedLM (latest or given step) with hard routing and no
transpositions (the deployed model: a checkpoint trained with a variant is analysed hardened), tokenizes the
text (ufbert_jax.analysis.text), runs it batch by batch, capturing every FFF layer's input, and counts
routing with ufbert_jax.analysis.routing. routing.json holds the exact integer counts and the summaries.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from tqdm import tqdm

from ufbert_jax import io
from ufbert_jax import workdir as workdir_lib
from ufbert_jax.analysis import capture, plots, routing
from ufbert_jax.analysis.text import token_rows
from ufbert_jax.data.tokenizer import check_vocabulary
from ufbert_jax.model import MaskedLM

FORMAT = "ufbert-jax/routing/1"
ROUTING_FILE = "routing.json"
HARD = dict(fff_routing="hard", fff_transpose=0.0, fff_hardening=0.0)


def default_config() -> ml_collections.ConfigDict:
    """The analysis settings (every field a --config.FIELD flag of `python -m ufbert_jax.analysis`)."""
    return ml_collections.ConfigDict(
        dict(
            eps=0.01,  # relative scale of the Gaussian noise on the FFF inputs (routing.py)
            seed=0,  # of the noise
            batch_size=16,  # rows of S tokens per step
            seq_len=0,  # tokens per row (0: the model's max_len)
            step=-1,  # checkpoint step (-1: the latest)
            fff_impl="auto",  # how the model's FFF layers run (ufbert_jax.fff.resolve_impl)
            progress_bar=True,
        )
    )


def _batch_counts(
    graphdef: nnx.GraphDef, state: nnx.State, ids: jax.Array, mask: jax.Array, key: jax.Array, eps: jax.Array
) -> list:
    """Every FFF layer's counts over one batch, ids and mask [B, S], of the tapped model (graphdef, state)."""
    keep = mask.reshape(-1).astype(bool)  # [B*S]
    counts = []
    for index, (layer, h) in enumerate(capture.run_tapped(nnx.merge(graphdef, state), ids, mask)):
        x = h.astype(layer.dtype).reshape(-1, h.shape[-1])  # [B, S, H] -> [B*S, H], as the layer computes
        w_in = layer.w_in[...].astype(layer.dtype)
        layer_key = jax.random.fold_in(key, index)
        counts.append(routing.layer_counts(x, w_in, layer.b_in[...], keep, layer_key, eps))
    return counts


def analyze(
    model: nnx.Module,
    token_ids: np.ndarray,
    attention_mask: np.ndarray,
    batch_size: int = 16,
    eps: float = 0.01,
    seed: int = 0,
    progress_bar: bool = True,
) -> list[routing.LayerCounts]:
    """The routing counts of every FFF layer of `model` over token_ids, attention_mask [R, S].

    Batches of `batch_size` rows (the last one padded with masked rows, so one compilation serves all).
    """
    if batch_size < 1:
        raise ValueError(f"{batch_size=} must be >= 1")
    tapped, layers = capture.tap(model)
    graphdef, state = nnx.split(tapped)
    step = jax.jit(functools.partial(_batch_counts, graphdef))  # pure in the arrays: compiles once
    trees, nodes, _ = layers[0].w_in.shape
    totals = [routing.LayerCounts.zeros(trees, (nodes + 1).bit_length() - 2) for _ in layers]
    key = jax.random.key(seed)
    rows = token_ids.shape[0]
    for batch, start in enumerate(
        tqdm(range(0, rows, batch_size), desc="routing", unit="batch", disable=not progress_bar)
    ):
        ids = np.zeros((batch_size, token_ids.shape[1]), np.int32)
        mask = np.zeros_like(ids)
        stop = min(start + batch_size, rows)
        ids[: stop - start], mask[: stop - start] = token_ids[start:stop], attention_mask[start:stop]
        counts = step(state, ids, mask, jax.random.fold_in(key, batch), jnp.float32(eps))
        for total, layer_counts in zip(totals, jax.device_get(counts), strict=True):
            total.add(layer_counts)
    return totals


def routing_json(totals: list[routing.LayerCounts], meta: dict) -> dict:
    """The routing.json dict: `meta` (workdir, text, model, perturbation, ...) and per layer the exact counts
    (visits, perturbation_same, perturbation_flipped), abs_logit_sum and the summary."""
    layers = [
        {
            "layer": index,
            "visits": counts.visits.tolist(),
            "abs_logit_sum": counts.abs_logit.tolist(),
            "perturbation_same": counts.same.tolist(),
            "perturbation_flipped": counts.flipped.tolist(),
            "summary": routing.summary(counts),
        }
        for index, counts in enumerate(totals)
    ]
    return {"format": FORMAT, **meta, "tokens": totals[0].tokens, "layers": layers}


def analyze_workdir(
    workdir: str | Path, text: str | Path, out: str | Path, max_tokens: int, config: ml_collections.ConfigDict
) -> dict:
    """Analyses `workdir` on the text file; writes out/routing.json and the figures; returns the dict."""
    workdir, out = Path(workdir), Path(out)
    cfg = workdir_lib.load_config(workdir).replace(fff_impl=config.fff_impl, **HARD)
    if cfg.feedforward != "fff":
        raise ValueError(f"{workdir} holds a {cfg.feedforward!r} feedforward model: nothing to route")
    model = MaskedLM(cfg, nnx.Rngs(0))
    step = workdir_lib.restore_params(workdir, model, None if config.step < 0 else config.step)
    tokenizer = workdir_lib.load_tokenizer(workdir)  # the one the model was trained with
    check_vocabulary(tokenizer, cfg.vocab_size, str(workdir))
    seq_len = config.seq_len or cfg.max_len
    ids, mask = token_rows(tokenizer, text, min(seq_len, cfg.max_len), max_tokens)
    totals = analyze(model, ids, mask, config.batch_size, config.eps, config.seed, config.progress_bar)
    meta = {
        "workdir": str(workdir),
        "checkpoint_step": step,
        "text": str(text),
        "max_tokens": max_tokens,
        "seq_len": ids.shape[1],
        "model": {
            "layers": cfg.layers,
            "hidden": cfg.hidden,
            "fff_trees": cfg.fff_trees,
            "fff_depth": cfg.fff_depth,
            "dtype": cfg.dtype,
        },
        "perturbation": {
            "kind": "gaussian",
            "relative_scale": config.eps,
            "seed": config.seed,
            "definition": "x + eps * rms(x) * n, n ~ N(0, I_H) per token and layer, on each FFF input alone",
        },
    }
    result = routing_json(totals, meta)
    io.write_text(out / ROUTING_FILE, json.dumps(result) + "\n")  # atomic; an error names the file
    result["figures"] = [str(path) for path in plots.write_all(result, out)]
    return result


def table(result: dict) -> str:
    """The per-layer summary as a text table: a title line, the header, a rule, one row per layer; every
    column as wide as its widest cell (header included), right-aligned, two spaces apart."""
    depth = result["model"]["fff_depth"]
    header = ("layer", "entropy bits", "max bits", "leaves unused", "|logit| root", "|logit| leaf")
    header += ("walks changed",)
    rows = []
    for layer in result["layers"]:
        s = layer["summary"]
        logit = s["mean_abs_logit_per_level"]
        rows.append(
            (
                f"{layer['layer']}",
                f"{s['path_entropy_bits']:.3f}",
                f"{depth}",
                f"{s['leaves_never_visited_fraction']:.1%}",
                f"{logit[0]:.3f}",
                f"{logit[-1]:.3f}",
                f"{s['changed_walks_fraction']:.2%}",
            )
        )
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    rule = tuple("-" * width for width in widths)
    aligned = [
        "  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)) for cells in (header, rule, *rows)
    ]
    model = result["model"]
    eps = result["perturbation"]["relative_scale"]
    return "\n".join(
        [
            f"{result['workdir']} step {result['checkpoint_step']}: {result['tokens']} tokens of "
            f"{result['text']}, {model['layers']} layers x {model['fff_trees']} trees of depth {depth}",
            *aligned,
            f"walks changed: by Gaussian noise of {eps:g} x rms on each FFF input",
        ]
    )
