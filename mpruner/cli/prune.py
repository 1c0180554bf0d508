"""``mpruner prune``: MPruner on a Hugging Face directory with CSV files, or on module:factory specs."""
from __future__ import annotations

import argparse
import csv
import os
import sys
import textwrap

from ..progress import no_library_bars
from ..prune.options import TOLERANCE_MODES, flags as option_flags, option
from .common import (auto_layers, check_out_dir, check_resume, check_source, cli_message, is_factory, load_factory,
                     positive_int, threshold_value, tolerance_of, tolerance_value)

PRUNE_EXAMPLES = """examples:
  mpruner prune --model ./my-bert-classifier --calib calib.txt --train train.csv --eval test.csv --out runs/bert
  mpruner prune --model nets.py:build --calib nets.py:calib_batches --train nets.py:train_batches \\
                --eval nets.py:evaluate --layers blocks --out runs/net

With a Hugging Face directory, --train/--eval are CSV files with a text and a label column
(--text-column, --label-column) and the metric is accuracy. With module:name, --calib and --train
name zero-argument factories of batches (dicts with labels, or (inputs, targets)); --eval names
either the metric function itself, evaluate(model) -> float (higher is better), or a zero-argument
factory returning that function or labelled batches (then the metric is accuracy).
"""

# How the command line parses the loop's options; each flag, default and help text is
# PruneOptions' own (mpruner/prune/options.py lists the options once).
LOOP_OPTIONS = {"threshold": dict(type=threshold_value), "tolerance": dict(type=tolerance_value),
                "tolerance_mode": dict(choices=TOLERANCE_MODES), "max_granularity": dict(type=positive_int),
                "max_iterations": dict(type=positive_int), "seed": dict(type=int)}


def _loop_options(p):
    g = p.add_argument_group("the MPruner loop")
    for name, parse in LOOP_OPTIONS.items():
        field = option(name)
        if name == "tolerance":
            g.add_argument(field.metadata["flag"], default=None, **parse,
                           help=field.metadata["doc"] + " (default: 0.01 absolute for accuracy, i.e. one point; 0.1 "
                                "relative for perplexity, i.e. at most 10%% above the original's)")
            continue
        g.add_argument(field.metadata["flag"], default=field.default, **parse,
                       help=field.metadata["doc"] + ("; also seeds a new classification head and recovery fine-tuning"
                                                     if name == "seed" else "") + " (default: %(default)s)")
    g.add_argument("--epochs", type=positive_int, default=1,
                   help="recovery fine-tuning epochs per attempt (default: %(default)s)")
    g.add_argument("--lr", type=float, default=5e-5, help="recovery fine-tuning learning rate (default: %(default)s)")
    g.add_argument("--max-steps", type=positive_int,
                   help="cap on recovery fine-tuning steps per attempt (default: no cap)")
    g.add_argument("--fsdp", action="store_true",
                   help="under torchrun, fine-tune fully sharded (torch FSDP2: one unit per block; parameters, "
                        "gradients and optimizer state split over the ranks) instead of DDP (default: DDP)")
    g.add_argument("--no-progress", action="store_true",
                   help="no progress bars; one line per stage and attempt is still printed (default: bars on)")


def add_parser(sub) -> None:
    """Registers ``prune`` on the ``mpruner`` command's subparsers."""
    from ..analysis.views import VIEWS

    p = sub.add_parser("prune", help="prune a model: analyse, remove, fine-tune, accept or roll back",
                       description=textwrap.fill(
                           "MPruner depth pruning: analyse layer CKA on calibration data, remove a cluster's "
                           "redundant layers, fine-tune, keep the result if the metric stays within --tolerance of "
                           "the original model's (else roll back and try a finer step); repeat. Every attempt is "
                           "checkpointed in --out/checkpoint.", 90),
                       epilog=PRUNE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="Hugging Face model directory (loaded as a sequence classifier), or module:factory")
    p.add_argument("--calib", help="calibration data: text file / CSV column, or module:factory (default: none; "
                                   "required unless --task causal-lm)")
    p.add_argument("--train", help="fine-tuning data: labelled CSV, or module:factory (default: none, no recovery "
                                   "fine-tuning)")
    p.add_argument("--eval",
                   help="evaluation (default: none; required unless --task causal-lm): labelled CSV (accuracy), or module:name naming evaluate(model) -> float "
                        "itself, or a zero-argument factory of that function or of labelled batches")
    p.add_argument("--text-column", default="text", help="CSV column with the text (default: %(default)s)")
    p.add_argument("--label-column", default="label", help="CSV column with the label (default: %(default)s)")
    p.add_argument("--layers", default=option("layers").default,
                   help="'auto', a block-list name or attribute path (default: %(default)s: the detected block "
                        "list, or the model's only nn.Sequential/nn.ModuleList)")
    p.add_argument("--view", choices=VIEWS,
                   help="layer view for the analysis (default: mean; tokens for the token strategies)")
    p.add_argument("--precision", default="highest", choices=("highest", "high", "medium", "tf32"),
                   help="float32 GEMM mode of the CKA analyses: highest (IEEE), high (TF32 on CUDA, two bfloat16 "
                        "terms on a CPU's matrix engine; tf32 is its alias), medium (bfloat16); without the "
                        "hardware, highest (default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=32,
                   help="texts per batch for CSV/text data; calibration needs >= 4 (default: %(default)s)")
    p.add_argument("--max-length", type=positive_int, default=128,
                   help="truncate texts to this many tokens (default: %(default)s)")
    p.add_argument("--out", default="mpruner-pruned", help="output directory (default: %(default)s)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from --out/checkpoint (refused when there is none) "
                        "(default: start afresh)")
    p.add_argument("--timeout", type=float, default=1800.0,
                   help="under torchrun: seconds a rank waits for the others before failing (default: %(default)s)")
    _loop_options(p)
    from .prune_stages import add_stage_options

    add_stage_options(p)
    from .prune_lm import add_lm_options

    add_lm_options(p)
    from .judge import add_judge_options

    add_judge_options(p)
    p.set_defaults(func=cmd_prune)


def _check_args(args) -> None:
    """Everything ``mpruner prune`` can check before the model loads."""
    check_source(args.model, "--model", "model")
    for flag in ("calib", "train", "eval"):
        value = getattr(args, flag)
        if value is not None:
            check_source(value, f"--{flag}", "file")
            if is_factory(args.model) and not is_factory(value):
                raise ValueError(f"--{flag} {value!r}: with --model module:factory, --{flag} must be "
                                 "module:factory too (a data file needs a Hugging Face model directory's tokenizer)")
    if not is_factory(args.calib) and args.batch_size < 4:
        raise ValueError(f"--batch-size {args.batch_size}: the calibration batches need at least 4 samples each "
                         "(the unbiased HSIC); use --batch-size 4 or more")
    check_out_dir(args.out)
    check_resume(args)


def _check_lm_args(args) -> None:
    """What ``mpruner prune --task causal-lm`` can check before the model loads."""
    check_source(args.model, "--model", "model")
    if not args.data:
        raise ValueError("--task causal-lm needs --data (a text file, one document per line)")
    check_source(args.data, "--data", "file")
    check_out_dir(args.out)
    check_resume(args)


def flag_message(error: BaseException) -> str:
    """A library message in the command line's words: option names become flags."""
    from ..prune.checkpoint import CheckpointMismatch

    if isinstance(error, CheckpointMismatch):
        changed = "; ".join(f"{option_flags().get(k, k)} was {saved!r}, now {now!r}"
                            for k, (saved, now) in error.differences.items())
        return (f"--resume: the checkpoint in {error.directory} was made with other options ({changed}); "
                "rerun with the checkpoint's options, or use another --out to start afresh")
    return cli_message(error).replace("checkpoint_dir", "--out")


def _evaluate_from(spec: str):
    """``--eval module:name``: the metric function itself (one parameter), or a zero-argument
    factory that returns the metric function or labelled batches (accuracy)."""
    import inspect

    import torch.nn as nn

    from ..evaluation import accuracy

    obj = load_factory(spec, "--eval", call=False)
    if callable(obj) and not isinstance(obj, (nn.Module, type)):
        try:
            params = [q for q in inspect.signature(obj).parameters.values()
                      if q.kind in (q.POSITIONAL_ONLY, q.POSITIONAL_OR_KEYWORD) and q.default is q.empty]
        except (TypeError, ValueError):  # no signature (a builtin): treat it as the metric function
            params = [None]
        if len(params) > 1:
            raise TypeError(f"--eval {spec!r} takes {len(params)} required arguments; it must be evaluate(model) "
                            "-> float, or a zero-argument factory")
        if len(params) == 1:
            return obj
        obj = obj()
    if callable(obj) and not isinstance(obj, nn.Module):
        return obj
    return lambda m: accuracy(m, obj)


def _labelled_csv(path, text_col, label_col, classes=None):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path!r} does not exist")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path!r} is not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from None
    except csv.Error as e:
        raise ValueError(f"{path!r} is not a readable CSV file ({e})") from None
    if not rows or text_col not in rows[0] or label_col not in rows[0]:
        raise ValueError(f"{path!r} needs columns {text_col!r} and {label_col!r} (set --text-column/--label-column); "
                         f"found {list(rows[0]) if rows else 'no rows'}")
    short = [i + 2 for i, r in enumerate(rows) if r[text_col] is None or r[label_col] is None]
    if short:  # DictReader fills missing fields with None
        raise ValueError(f"{path!r}: line(s) {short[:5]} have fewer fields than the header")
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

    from ..data import read_texts, text_batches
    from ..evaluation import accuracy
    from ..training import Finetuner

    progress = not args.no_progress
    if is_factory(args.model):
        model = load_factory(args.model, "--model")
        if not isinstance(model, nn.Module):
            raise TypeError(f"--model {args.model!r} gave a {type(model).__name__}, not a torch.nn.Module")
        calib = load_factory(args.calib, "--calib")
        train = load_factory(args.train, "--train") if args.train else None
        evaluate = _evaluate_from(args.eval)
    else:
        # The data files first (cheap, and a bad column shows at once), then the model.
        train_ds = _labelled_csv(args.train, args.text_column, args.label_column) if args.train else None
        eval_ds = _labelled_csv(args.eval, args.text_column, args.label_column,
                                list(train_ds.classes) if train_ds else None)
        texts = read_texts(args.calib, args.text_column if args.calib.endswith((".csv", ".tsv")) else None)
        import transformers

        tok = transformers.AutoTokenizer.from_pretrained(args.model, local_files_only=True, trust_remote_code=False)
        model = transformers.AutoModelForSequenceClassification.from_pretrained(args.model, local_files_only=True,
                                                                     trust_remote_code=False,
                                                                     num_labels=len(eval_ds.classes))
        calib = text_batches(texts, tok, args.batch_size, args.max_length)
        train = text_batches(train_ds, tok, args.batch_size, args.max_length, with_labels=True) if train_ds else None
        evald = text_batches(eval_ds, tok, args.batch_size, args.max_length, with_labels=True)
        evaluate = lambda m: accuracy(m, evald)  # noqa: E731
    finetune = None if train is None else Finetuner(train, epochs=args.epochs, lr=args.lr, max_steps=args.max_steps,
                                                    progress=progress, fsdp=True if args.fsdp else None,
                                                    seed=args.seed)
    return model, calib, evaluate, finetune, (None if is_factory(args.model) else tok)


def cmd_prune(args) -> int:
    import torch

    from ..distributed import Ranks, init_from_environment
    from ..prune import MPruner
    from ..prune.outputs import write_report

    init_from_environment(args.timeout)  # under torchrun; a no-op in one process
    try:
        causal = getattr(args, "task", "classification") == "causal-lm"
        if causal:
            _check_lm_args(args)
        else:
            if not args.calib or not args.eval:
                raise ValueError("--calib and --eval are required (or --task causal-lm --data corpus.txt)")
            _check_args(args)
        if getattr(args, "fsdp", False):
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized()):
                raise ValueError("--fsdp shards the fine-tuning over the ranks of torchrun: launch with "
                                 "torchrun --nproc_per_node N -m mpruner prune ... (N >= 2), or drop --fsdp")
        if args.no_progress:
            no_library_bars()
        from .judge import command_line, make_judge, metric_label

        judge = make_judge(args)  # --judge lm-eval:TASK: its tasks checked and read before the model loads
        print(f"mpruner prune: loading {args.model}", flush=True)
        options, tokenizer = {}, None
        torch.manual_seed(args.seed)  # what the model initialises afresh (a new classification head) is seeded
        if causal:
            from .prune_lm import build_causal_lm

            model, calib, evaluate, finetune, options = build_causal_lm(args)
            if judge is not None:
                evaluate, options["higher_is_better"] = judge, judge.higher_is_better
        else:
            model, calib, evaluate, finetune, tokenizer = _build(args)
        Ranks.current().sync_weights(model)  # under torchrun every rank starts from rank 0's weights
        from .prune_stages import run_pipeline, wants_stages

        layers = auto_layers(model, args.layers, lambda line: print(line, flush=True), "prune")
        if args.precision != "highest":  # the CKA analyses' GEMM mode
            options["analyze_kwargs"] = {**(options.get("analyze_kwargs") or {}), "precision": args.precision}
        if wants_stages(args):
            return run_pipeline(args, model, calib, evaluate, finetune, layers, options.get("analyze_kwargs"))
        pruner = MPruner(model, calib, evaluate, finetune=finetune, layers=layers, **options,
                         threshold=args.threshold, tolerance=tolerance_of(args),
                         tolerance_mode=args.tolerance_mode, max_granularity=args.max_granularity,
                         max_iterations=args.max_iterations, view=args.view, seed=args.seed,
                         checkpoint_dir=os.path.join(args.out, "checkpoint"), progress=not args.no_progress)
        try:
            result = pruner.run(resume=args.resume)
        except KeyboardInterrupt:
            return interrupted(args, pruner)
        if not pruner.ranks.is_main:  # rank 0 writes the report
            return 0
        from ..prune.outputs import recipe

        summary = write_report(result, args.out, extra={"model_source": args.model, **metric_label(args, judge)},
                               tokenizer=tokenizer, card={"recipe": recipe(pruner.options),
                                                          "command": command_line(args)})
    except (ValueError, TypeError, FileNotFoundError, ImportError, AttributeError) as e:
        print(f"mpruner prune: error: {flag_message(e)}", file=sys.stderr)
        return 1
    print(result.summary())
    print(f"wrote {args.out}: summary.json, history.json, heatmaps, model/ ({summary['model_saved_with']})")
    if result.nothing_removed():
        print(f"mpruner prune: {result.nothing_removed()}")  # the last line says why
    return 0


def resume_command(argv=None) -> str:
    """The command line that continues this run: the same one, with --resume."""
    import shlex

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--resume" not in argv:
        argv.append("--resume")
    return shlex.join(["mpruner"] + argv)


def interrupted(args, pruner) -> int:
    """Ctrl-C: what the checkpoint holds and the exact command that resumes it (exit status 130)."""
    from ..training.healing_state import FILE

    if not pruner.ranks.is_main:
        return 130
    directory = os.path.join(args.out, "checkpoint")
    state = os.path.join(directory, "state.json")
    lines = ["", "mpruner prune: interrupted."]
    if os.path.isfile(state):
        accepted = sum(1 for h in pruner.history if h.accepted)
        lines.append(f"  saved in {directory}: the model after {accepted} accepted removal(s) "
                     f"({pruner._num_layers(pruner.model)} of {pruner.layers_before} blocks) and the state of "
                     f"{len(pruner.history)} finished attempt(s)")
    else:
        lines.append(f"  nothing was finished yet, so {directory} holds no checkpoint: --resume starts over")
    if os.path.isfile(os.path.join(directory, FILE)):
        lines.append(f"  and the healing in progress ({os.path.join(directory, FILE)}): it continues where it stopped")
    lines.append(f"  resume with: {resume_command()}")
    print("\n".join(lines), file=sys.stderr, flush=True)
    return 130
