"""The routing figures, from the routing.json dict (ufbert_jax.analysis.routing_report.routing_json).

routing_heatmap.png  per layer, node usage by level: log2 of each node's share of the tokens against the
                     uniform share 2^-l of level l (0: as often as a uniform split; grey: never visited);
                     up to MAX_TREES trees side by side
entropy.png          path entropy per layer (bits) against the maximum D, and the never-visited leaves
margins.png          mean |logit| of the visited node per level, and the perturbation flip rate per level
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

MAX_TREES = 4
HEATMAP_LIMIT = 6.0  # colour scale: +-6, i.e. 64x more or less often than uniform


def usage_image(visits: np.ndarray, tokens: int) -> np.ndarray:
    """[K, N] visit counts -> [L, K * (2^D + 1) - 1] image: level rows, each node spanning 2^(D-l) columns.

    Values are log2(visits / (tokens 2^-l)); NaN where never visited. Trees are separated by a NaN column.
    """
    trees, nodes = visits.shape
    depth = (nodes + 1).bit_length() - 2
    width = 2**depth
    image = np.full((depth + 1, trees * (width + 1) - 1), np.nan)
    for k in range(trees):
        for level in range(depth + 1):
            row = visits[k, 2**level - 1 : 2 ** (level + 1) - 1].astype(np.float64)  # [2^l]
            with np.errstate(divide="ignore"):
                share = np.where(row > 0, np.log2(row * 2**level / max(tokens, 1)), np.nan)
            image[level, k * (width + 1) : k * (width + 1) + width] = np.repeat(share, 2 ** (depth - level))
    return image


def heatmap(result: dict, path: Path) -> None:
    layers = result["layers"]
    trees = min(result["model"]["fff_trees"], MAX_TREES)
    fig = Figure(figsize=(8, 1.2 + 1.1 * len(layers)), layout="constrained")
    axes = fig.subplots(len(layers), 1, squeeze=False)[:, 0]
    for ax, layer in zip(axes, layers, strict=True):
        image = usage_image(np.asarray(layer["visits"])[:trees], layer["summary"]["tokens"])
        shown = ax.imshow(
            np.ma.masked_invalid(image),
            aspect="auto",
            interpolation="nearest",
            cmap="RdBu_r",
            vmin=-HEATMAP_LIMIT,
            vmax=HEATMAP_LIMIT,
        )
        shown.cmap.set_bad("0.8")
        ax.set_ylabel(f"layer {layer['layer']}\nlevel")
        ax.set_xticks([])
    total = result["model"]["fff_trees"]
    axes[-1].set_xlabel(f"nodes of each level, heap order (first {trees} of {total} trees)")
    fig.colorbar(shown, ax=list(axes), label="log2(visits / uniform share); grey: never")
    fig.suptitle(f"FFF node usage, {result['tokens']} tokens")
    fig.savefig(path, dpi=120)


def entropy_figure(result: dict) -> Figure:
    """Path entropy per layer (bars), its maximum D (dashed) and the never-visited leaves (right axis), one
    legend entry each."""
    layers = [layer["layer"] for layer in result["layers"]]
    summaries = [layer["summary"] for layer in result["layers"]]
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    ax.bar(layers, [s["path_entropy_bits"] for s in summaries], color="C0", label="path entropy (bits)")
    ax.axhline(summaries[0]["max_path_entropy_bits"], color="k", ls="--", label="maximum, log2(2^D) bits")
    ax.set_xlabel("layer")
    ax.set_ylabel("bits")
    never = ax.twinx()
    fraction = [s["leaves_never_visited_fraction"] for s in summaries]
    never.plot(layers, fraction, "o-", color="C3", label="leaves never visited (fraction, right axis)")
    never.set_ylabel("leaves never visited (fraction)", color="C3")
    never.set_ylim(0, 1)
    handles = [*ax.get_legend_handles_labels()[0], *never.get_legend_handles_labels()[0]]
    fig.legend(handles=handles, loc="outside lower center", ncols=3, fontsize="small")  # below: no overlap
    ax.set_xticks(layers)
    fig.suptitle(f"Path entropy per layer (mean over trees), {result['tokens']} tokens")
    return fig


def entropy(result: dict, path: Path) -> None:
    entropy_figure(result).savefig(path, dpi=120)


def margins(result: dict, path: Path) -> None:
    fig = Figure(figsize=(10, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    for layer in result["layers"]:
        s = layer["summary"]
        left.plot(s["mean_abs_logit_per_level"], "o-", label=f"layer {layer['layer']}")
        right.plot(s["flip_rate_per_level"], "o-", label=f"layer {layer['layer']}")
    left.set(xlabel="level", ylabel="mean |logit| of the visited node", title="Routing margins")
    eps = result["perturbation"]["relative_scale"]
    right.set(xlabel="level", ylabel="decisions flipped (fraction)", title=f"Input noise, eps = {eps:g} rms")
    for ax in (left, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)


FIGURES = {"routing_heatmap.png": heatmap, "entropy.png": entropy, "margins.png": margins}


def write_all(result: dict, out: str | Path) -> list[Path]:
    """Writes every figure into `out`; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, draw in FIGURES.items():
        draw(result, out / name)
    return [out / name for name in FIGURES]
