"""Convert the original UltraFastBERT checkpoint format to a ufbert-jax workdir and back
(docs/published_model.md).

    python convert.py --source=DIR_OR_HUB_ID --workdir=WORKDIR        # original -> workdir (step 0)
    python convert.py --workdir=WORKDIR --export=DIR [--step=N]       # workdir -> original format

--source is an original-format directory (config.json, model.safetensors, tokenizer.json) or a Hugging
Face hub id (pbelcak/UltraFastBERT-1x11-long); the workdir is the one train.py and eval_glue.py use.
"""

from __future__ import annotations

from absl import app, flags

from ufbert_jax import cli, logs, original_format
from ufbert_jax.model import count_params

flags.DEFINE_string("source", None, "Original-format directory or hub id to convert into --workdir.")
flags.DEFINE_string("workdir", None, "The ufbert-jax workdir: written from --source, or read for --export.")
flags.DEFINE_string("export", None, "Write --workdir's checkpoint to this directory in the original format.")
flags.DEFINE_integer("step", None, "With --export: the checkpoint step (default: the latest).")
flags.mark_flags_as_required(["workdir"])
flags.mark_flags_as_mutual_exclusive(["source", "export"], required=True)


def main(argv: list[str]) -> None:
    del argv
    logs.setup()
    fl = flags.FLAGS
    if fl.source is not None:
        if fl.step is not None:
            raise app.UsageError("--step only applies to --export")
        model = original_format.to_workdir(fl.source, fl.workdir)
        print(f"{fl.source} -> {fl.workdir}: {model.cfg}, {count_params(model):,} parameters, step 0")
    else:
        out = original_format.from_workdir(fl.workdir, fl.export, fl.step)
        print(f"{fl.workdir} -> {out} (original format)")


if __name__ == "__main__":
    cli.run(main, "convert.py")
