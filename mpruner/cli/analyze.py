"""``mpruner analyze``: CKA between a model's layers from the command line.

Two ways to name the model and data:

- a Hugging Face model directory (``--model DIR``) with a text file, one example per
  line, or a CSV/TSV column (``--data reviews.csv --column text``);
- ``--model module:factory --data module:factory`` for anything else: ``factory`` is a
  callable (called without arguments) or an object; ``module`` is an importable module
  or a ``path/to/file.py``. The data factory gives an iterable of batches.

Writes ``cka.json`` (``Analysis.save``) and ``cka.png`` (``Analysis.plot``) to ``--out``
and prints the CKA of each pair of adjacent layers.
"""
from __future__ import annotations

import argparse
import os
import sys

from ..progress import no_library_bars
from .common import auto_layers, check_out_dir, check_source, cli_message, is_factory, load_factory, positive_int

EXAMPLES = """examples:
  mpruner analyze --model ./all-MiniLM-L6-v2 --data sentences.txt --out runs/minilm
  mpruner analyze --model ./bert-dir --data reviews.csv --column review --view tokens --batch-size 16
  mpruner analyze --model mymodels.py:build_resnet --data mymodels.py:calibration_batches --out runs/resnet
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``analyze`` on the ``mpruner`` command's subparsers."""
    from ..analysis.views import VIEWS

    p = subparsers.add_parser(
        "analyze", help="CKA between the layers of a model on calibration data (cka.json, cka.png)",
        description="Run a model over calibration data and compute the CKA similarity of its layers\n"
                    "(MPruner's analysis stage). Arguments and files are checked before the model loads.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True,
                   help="Hugging Face model directory, or module:factory (a callable returning the nn.Module)")
    p.add_argument("--data", required=True,
                   help="text file (one example per line), CSV/TSV file, or module:factory (batches)")
    p.add_argument("--column", help="CSV/TSV column holding the text (default: 'text')")
    p.add_argument("--out", default="mpruner-analysis", help="output directory (default: %(default)s)")
    p.add_argument("--layers", default="auto",
                   help="'auto', a block-list name or attribute path, or comma-separated module names "
                        "(default: %(default)s: the detected block list, or the model's only "
                        "nn.Sequential/nn.ModuleList)")
    p.add_argument("--view", choices=VIEWS, help="how a layer output becomes features (default: mean for CKA, "
                   "tokens for cosine/angular)")
    p.add_argument("--metric", default="cka", choices=("cka", "cosine", "angular"),
                   help="cka, or the token metrics cosine / angular (with Block Influence) (default: %(default)s)")
    p.add_argument("--kernel", default="linear", choices=("linear", "rbf"), help="CKA kernel (default: %(default)s)")
    p.add_argument("--biased", action="store_true",
                   help="biased HSIC_0 (batches of >= 2) instead of the unbiased HSIC_1 (>= 4) (default: unbiased)")
    p.add_argument("--precision", default="highest", choices=("highest", "high", "medium", "tf32"),
                   help="float32 GEMM mode of the CKA Grams: highest (IEEE), high (TF32 on CUDA, two bfloat16 terms "
                        "on a CPU's matrix engine; tf32 is its alias), medium (bfloat16); without the hardware, "
                        "highest (default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="texts per batch (default: %(default)s)")
    p.add_argument("--max-length", type=positive_int, default=128,
                   help="truncate texts to this many tokens (default: %(default)s)")
    p.add_argument("--limit", type=positive_int, help="use at most this many texts (default: all)")
    p.add_argument("--max-batches", type=positive_int, help="stop after this many batches (default: all)")
    p.add_argument("--device", help="run on this device, e.g. cuda (default: cpu)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar; one line per stage is still printed (default: bars on)")
    p.set_defaults(func=cmd_analyze)
    return p


def check_args(args) -> None:
    """Everything ``mpruner analyze`` can check before the model loads."""
    check_source(args.model, "--model", "model")
    check_source(args.data, "--data", "file")
    if not is_factory(args.data) and is_factory(args.model):
        raise ValueError("a text/CSV --data file needs a Hugging Face model directory (for its tokenizer); "
                         "with --model module:factory pass --data module:factory too")
    need = 2 if args.biased else 4
    if not is_factory(args.data) and args.batch_size < need:
        raise ValueError(f"--batch-size {args.batch_size}: the {'biased' if args.biased else 'unbiased'} HSIC "
                         f"needs at least {need} samples per batch; use --batch-size {need} or more"
                         + ("" if args.biased else " (or --biased, which needs 2)"))
    check_out_dir(args.out)


def _hf_model(directory: str):
    check_source(directory, "--model", "model")
    try:
        import transformers
    except ImportError:
        raise ModuleNotFoundError("a Hugging Face model directory needs transformers: "
                                  "pip install transformers") from None
    model = transformers.AutoModel.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
    return model, directory


def _encoder_decoder_forward(model, batch):
    # Feed the text to both stacks so that encoder and decoder blocks can be analysed.
    return model(**batch, decoder_input_ids=batch["input_ids"], decoder_attention_mask=batch.get("attention_mask"))


def build(args):
    """(model, data, forward) from the command line arguments."""
    import torch.nn as nn

    from ..data import read_texts, text_batches

    forward, tokenizer_dir, texts = None, None, None
    if not is_factory(args.data):
        texts = read_texts(args.data, args.column, args.limit)  # a bad file or column shows before the model loads
    if is_factory(args.model):
        model = load_factory(args.model, "--model")
        if not isinstance(model, nn.Module):
            raise TypeError(f"--model {args.model!r} gave a {type(model).__name__}, not a torch.nn.Module")
    else:
        model, tokenizer_dir = _hf_model(args.model)
        if getattr(model.config, "is_encoder_decoder", False):
            forward = _encoder_decoder_forward
    if is_factory(args.data):
        data = load_factory(args.data, "--data")
    else:
        if tokenizer_dir is None:
            raise ValueError("a text/CSV --data file needs a Hugging Face model directory (for its tokenizer); "
                             "with --model module:factory pass --data module:factory too")
        import transformers

        tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True, trust_remote_code=False)
        data = text_batches(texts, tokenizer, batch_size=args.batch_size, max_length=args.max_length)
    return model, data, forward


def report(analysis, out_dir: str) -> str:
    """The text the command prints."""
    o = analysis.options
    lines = [f"{o['model']}: {analysis.num_layers} layers ({o['layers'] or 'the model'}), view={o['view']}, "
             f"{o['kernel']} kernel, {'unbiased' if o['unbiased'] else 'biased'}, {analysis.num_samples} samples "
             f"in {o['num_batches']} batches" + (f" ({o['skipped_batches']} skipped)" if o["skipped_batches"] else "")]
    metric = {"cka": "CKA"}.get(analysis.metric, analysis.metric)
    lines.append(f"adjacent-layer {metric}:")
    width = max(len(n) for n in analysis.layer_names)
    for i, value in enumerate(analysis.adjacent().tolist()):
        lines.append(f"  {i:>3} -> {i + 1:<3} {analysis.layer_names[i]:<{width}} -> "
                     f"{analysis.layer_names[i + 1]:<{width}}  {value:.4f}")
    if analysis.block_io is not None:
        lines.append("Block Influence (1 - cos(input, output)):")
        for i, value in enumerate(analysis.block_influence().tolist()):
            lines.append(f"  {i:>3} {analysis.layer_names[i]:<{width}}  {value:.4f}")
    stem = _stem(analysis)
    lines.append(f"wrote {os.path.join(out_dir, stem + '.json')} and {os.path.join(out_dir, stem + '.png')}")
    return "\n".join(lines)


def _stem(analysis) -> str:
    return "cka" if analysis.metric == "cka" else analysis.metric


def cmd_analyze(args) -> int:
    """Entry point of ``mpruner analyze``."""
    from ..analysis import analyze

    layers = args.layers
    if "," in layers:
        layers = [name.strip() for name in layers.split(",") if name.strip()]
    def say(line):  # one line per stage, with or without bars
        print(line, flush=True)

    try:
        check_args(args)
        if args.no_progress:
            no_library_bars()
        say(f"mpruner analyze: loading {args.model} and {args.data}")
        model, data, forward = build(args)
        if args.device:
            model.to(args.device)  # the CLI's own model instance
        layers = auto_layers(model, layers, say, "analyze")
        size = f"{len(data)} batches" if hasattr(data, "__len__") else "the batches"
        say(f"mpruner analyze: running {type(model).__name__} over {size}"
            + (f" (at most {args.max_batches})" if args.max_batches else ""))
        analysis = analyze(model, data, layers=layers, view=args.view, kernel=args.kernel, unbiased=not args.biased,
                           forward=forward, max_batches=args.max_batches, progress=not args.no_progress,
                           metric=getattr(args, "metric", "cka"), precision=getattr(args, "precision", "highest"))
        os.makedirs(args.out, exist_ok=True)
        analysis.save(os.path.join(args.out, _stem(analysis) + ".json"))
        analysis.plot(os.path.join(args.out, _stem(analysis) + ".png"))
    except (ValueError, TypeError, FileNotFoundError, ModuleNotFoundError, AttributeError, RuntimeError) as e:
        print(f"mpruner analyze: error: {cli_message(e)}", file=sys.stderr)
        return 1
    print(report(analysis, args.out))
    return 0
