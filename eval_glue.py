"""Fine-tune a pretrained workdir on GLUE and report the dev scores (docs/glue.md).

    python eval_glue.py --workdir WORKDIR --glue_dir ../shared/data/glue [--tasks cola,sst2,...]
        [--epochs N] [--batch_size B] [--lr LR] [--max_train_examples N] [--override cola.epochs=15]
        [--out DIR] [--hub]

Every field of the config file (default configs/glue.py) is a flag of the same name; --override sets a
field for one task. Prints the per-task table and the averages, and writes results.json and results.md to
--out (default WORKDIR/glue).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
from pathlib import Path

import ml_collections

from ufbert_jax.glue import Pretrained, load_hub, load_local, report, run_glue

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "glue.py"


def load_config(path: str | Path) -> ml_collections.ConfigDict:
    """Runs the config file's get_config()."""
    spec = importlib.util.spec_from_file_location("glue_config", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"config file {path} not found")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def _parser_for(value):
    """An argparse type that parses a flag into the type of the config field's default `value`."""
    if isinstance(value, bool):  # before int: bool is an int
        return lambda text: text.lower() in ("1", "true", "yes")
    if isinstance(value, tuple):
        return lambda text: tuple(int(part) for part in text.split(",") if part)
    if isinstance(value, int | float | str):
        return type(value)
    raise TypeError(f"config field of type {type(value).__name__} cannot be a flag")


def _apply_override(config: ml_collections.ConfigDict, text: str) -> None:
    """Applies one TASK.FIELD=VALUE, parsed with the type of the top-level FIELD."""
    target, sep, value = text.partition("=")
    task, dot, field = target.partition(".")
    if not (sep and dot and field in config and field != "task_overrides"):
        raise ValueError(f"--override {text!r}: expected TASK.FIELD=VALUE with FIELD a recipe field")
    overrides = config.task_overrides.to_dict()
    overrides.setdefault(task, {})[field] = _parser_for(config[field])(value)
    config.task_overrides = overrides


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, ml_collections.ConfigDict]:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=str(DEFAULT_CONFIG))
    config = load_config(pre.parse_known_args(argv)[0].config)

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="Python config file with get_config()")
    parser.add_argument(
        "--workdir", required=True, help="pretraining workdir (model.json, tokenizer.json, ...)"
    )
    parser.add_argument("--glue_dir", help="GLUE data in the original TSV layout")
    parser.add_argument("--hub", action="store_true", help="read nyu-mll/glue from the Hugging Face Hub")
    parser.add_argument("--out", help="where results.json and results.md go (default WORKDIR/glue)")
    parser.add_argument(
        "--override", action="append", default=[], metavar="TASK.FIELD=VALUE", help="a per-task recipe field"
    )
    for field, value in config.items():
        if field != "task_overrides":
            parser.add_argument(f"--{field}", type=_parser_for(value), default=value, help=f"default {value}")
    args = parser.parse_args(argv)
    if bool(args.glue_dir) == args.hub:
        parser.error("give exactly one source: --glue_dir DIR or --hub")
    for field in config:
        if field != "task_overrides":
            config[field] = getattr(args, field)
    for text in args.override:
        _apply_override(config, text)
    return args, config


def main(argv: list[str] | None = None) -> dict:
    args, config = parse_args(argv)
    source = load_hub if args.hub else functools.partial(load_local, root=args.glue_dir)
    pretrained = Pretrained.load(args.workdir, step=None if config.step < 0 else config.step)
    results = {"source": "hub" if args.hub else str(args.glue_dir), **run_glue(config, pretrained, source)}
    print(report.markdown(results), end="")
    json_path, md_path = report.write(results, args.out or Path(args.workdir) / "glue")
    print(f"wrote {json_path} and {md_path}")
    return results


if __name__ == "__main__":
    main()
