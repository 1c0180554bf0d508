"""``mpruner prune`` and ``mpruner demo``."""
from __future__ import annotations

import argparse
import csv
import os
import sys

PRUNE_EXAMPLES = """examples:
  mpruner prune --model ./my-bert-classifier --calib calib.txt --train train.csv --eval test.csv --out runs/bert
  mpruner prune --model nets.py:build --calib nets.py:calib_batches --train nets.py:train_batches \\
                --eval nets.py:evaluate --layers blocks --out runs/net

With a Hugging Face directory, --train/--eval are CSV files with a text and a label column
(--text-column, --label-column) and the metric is accuracy. With module:factory, --train gives
batches (dicts with labels, or (inputs, targets)) and --eval gives either evaluate(model) -> float
or labelled batches (accuracy).
"""


def _loop_options(p):
    g = p.add_argument_group("the MPruner loop")
    g.add_argument("--threshold", default="0.98", help="CKA threshold for clusters, or 'auto' (%(default)s)")
    g.add_argument("--tolerance", type=float, default=0.01, help="allowed metric drop (%(default)s)")
    g.add_argument("--tolerance-mode", choices=("absolute", "relative"), default="absolute")
    g.add_argument("--max-granularity", type=int, default=3)
    g.add_argument("--max-iterations", type=int, default=10)
    g.add_argument("--epochs", type=int, default=1, help="recovery fine-tuning epochs per attempt (%(default)s)")
    g.add_argument("--lr", type=float, default=5e-5, help="recovery fine-tuning learning rate (%(default)s)")
    g.add_argument("--max-steps", type=int, help="cap on recovery fine-tuning steps per attempt")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def _threshold(value: str):
    return value if value == "auto" else float(value)


def add_parsers(sub) -> None:
    """Registers ``prune`` and ``demo`` on the ``mpruner`` command's subparsers."""
    p = sub.add_parser("prune", help="prune a model: analyse, remove, fine-tune, accept or roll back",
                       epilog=PRUNE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="Hugging Face model directory, or module:factory")
    p.add_argument("--calib", help="calibration data: text file / CSV column, or module:factory")
    p.add_argument("--train", help="fine-tuning data: labelled CSV, or module:factory (none: no recovery)")
    p.add_argument("--eval", help="evaluation: labelled CSV, or module:factory")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--layers", default="auto", help="'auto', a block-list name or attribute path")
    p.add_argument("--view", help="layer view for the analysis (default: mean; tokens for the token strategies)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--out", default="mpruner-pruned", help="output directory (%(default)s)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from --out/checkpoint")
    _loop_options(p)
    from .cli_lm import add_lm_options

    add_lm_options(p)
    p.set_defaults(func=cmd_prune)

    d = sub.add_parser("demo", help="MPruner end to end on a real pretrained model, offline")
    d.add_argument("--scenario", choices=("text", "vision", "lm"), default="text",
                   help="text: all-MiniLM-L6-v2 on Rotten Tomatoes; vision: EfficientNet-Lite0 on Fashion-MNIST; "
                        "lm: SmolLM2-135M on Wikipedia summaries (perplexity)")
    d.add_argument("--out", default=os.path.join("runs", "demo"), help="output directory (%(default)s)")
    d.add_argument("--quick", action="store_true", help="a tiny smoke run (minutes; accuracies not meaningful)")
    d.add_argument("--resume", action="store_true", help="continue an interrupted demo from --out/checkpoint")
    d.add_argument("--threshold", help="CKA threshold or 'auto' (default: auto)")
    d.add_argument("--tolerance", type=float, help="allowed accuracy drop (default 0.01)")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from .demo import run_demo

    threshold = None if args.threshold is None else _threshold(args.threshold)
    try:
        if args.scenario == "lm":
            from .demo_lm import run_lm_demo

            run_lm_demo(args.out, quick=args.quick, progress=not args.no_progress, tolerance=args.tolerance)
            return 0
        run_demo(args.scenario, args.out, quick=args.quick, progress=not args.no_progress, resume=args.resume,
                 threshold=threshold, tolerance=args.tolerance)
    except (ImportError, FileNotFoundError, ValueError) as e:
        print(f"mpruner demo: error: {e}", file=sys.stderr)
        return 1
    return 0


def _labelled_csv(path, text_col, label_col, classes=None):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path!r} does not exist")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or text_col not in rows[0] or label_col not in rows[0]:
        raise ValueError(f"{path!r} needs columns {text_col!r} and {label_col!r} (set --text-column/--label-column); "
                         f"found {list(rows[0]) if rows else 'no rows'}")
    raw = [r[label_col] for r in rows]
    classes = classes or sorted(set(raw), key=lambda v: (not v.lstrip('-').isdigit(), int(v) if v.lstrip('-').isdigit() else 0, v))
    unknown = sorted(set(raw) - set(classes))
    if unknown:
        raise ValueError(f"{path!r} has labels {unknown[:5]} that the training data does not have")
    import torch

    from ..data import TextDataset

    return TextDataset(tuple(r[text_col] for r in rows), torch.tensor([classes.index(v) for v in raw]), tuple(classes))


def _build(args):
    import torch.nn as nn

    from ..analysis.cli import is_factory, load_factory
    from ..data import read_texts, text_batches
    from .demo import accuracy
    from .finetune import Finetuner

    progress = not args.no_progress
    if is_factory(args.model):
        model = load_factory(args.model, "--model")
        if not isinstance(model, nn.Module):
            raise TypeError(f"--model {args.model!r} gave a {type(model).__name__}, not a torch.nn.Module")
        calib = load_factory(args.calib, "--calib")
        train = load_factory(args.train, "--train") if args.train else None
        ev = load_factory(args.eval, "--eval")
        evaluate = ev if callable(ev) and not isinstance(ev, nn.Module) else (lambda m: accuracy(m, ev))
    else:
        import transformers as T

        if not os.path.isfile(os.path.join(args.model, "config.json")):
            raise FileNotFoundError(f"--model {args.model!r} is not a Hugging Face model directory (no config.json) "
                                    "nor module:factory")
        tok = T.AutoTokenizer.from_pretrained(args.model, local_files_only=True)
        train_ds = _labelled_csv(args.train, args.text_column, args.label_column) if args.train else None
        eval_ds = _labelled_csv(args.eval, args.text_column, args.label_column,
                                list(train_ds.classes) if train_ds else None)
        model = T.AutoModelForSequenceClassification.from_pretrained(args.model, local_files_only=True,
                                                                     num_labels=len(eval_ds.classes))
        texts = read_texts(args.calib, args.text_column if args.calib.endswith((".csv", ".tsv")) else None)
        calib = text_batches(texts, tok, args.batch_size, args.max_length)
        train = text_batches(train_ds, tok, args.batch_size, args.max_length, with_labels=True) if train_ds else None
        evald = text_batches(eval_ds, tok, args.batch_size, args.max_length, with_labels=True)
        evaluate = lambda m: accuracy(m, evald)  # noqa: E731
    finetune = None if train is None else Finetuner(train, epochs=args.epochs, lr=args.lr, max_steps=args.max_steps,
                                                    progress=progress)
    return model, calib, evaluate, finetune


def cmd_prune(args) -> int:
    from .loop import MPruner
    from .report import write_report

    try:
        options = {}
        if getattr(args, "task", "classification") == "causal-lm":
            from .cli_lm import build_causal_lm

            model, calib, evaluate, finetune, options = build_causal_lm(args)
        else:
            if not args.calib or not args.eval:
                raise ValueError("--calib and --eval are required (or --task causal-lm --data corpus.txt)")
            model, calib, evaluate, finetune = _build(args)
        pruner = MPruner(model, calib, evaluate, finetune=finetune, layers=args.layers, **options,
                         threshold=_threshold(args.threshold), tolerance=args.tolerance,
                         tolerance_mode=args.tolerance_mode, max_granularity=args.max_granularity,
                         max_iterations=args.max_iterations, view=args.view,
                         checkpoint_dir=os.path.join(args.out, "checkpoint"), progress=not args.no_progress)
        result = pruner.run(resume=args.resume)
        summary = write_report(result, args.out, extra={"model_source": args.model})
    except (ValueError, TypeError, FileNotFoundError, ImportError, AttributeError) as e:
        print(f"mpruner prune: error: {e}", file=sys.stderr)
        return 1
    print(result.summary())
    print(f"wrote {args.out}: summary.json, history.json, heatmaps, model/ ({summary['model_saved_with']})")
    return 0
