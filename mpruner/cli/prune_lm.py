"""``mpruner prune --task causal-lm``: a decoder LM judged by held-out perplexity.

The text file (``--data``, one document per line) is split in file order: the last
``--heldout`` lines (default 10%) are the perplexity text, the rest feeds the analysis
(calibration windows) and the healing (distillation from the original model, by default, with
LoRA adapters, the blocks around each cut, the last blocks, or everything: ``--heal-train``), for
``--heal-tokens`` tokens or ``--max-steps`` steps per attempt (no healing without either).
"""
from __future__ import annotations

import argparse
import os

from ..prune.options import option
from ..prune.strategies import SELECTIONS


def token_count(value: str) -> int:
    from ..training.budget import parse_tokens

    try:
        return parse_tokens(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def train_mode(value: str) -> str:
    from ..training.partial import check_train

    try:
        return check_train(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_lm_options(p) -> None:
    g = p.add_argument_group("causal language models (--task causal-lm)")
    g.add_argument("--task", choices=("classification", "causal-lm"), default="classification",
                   help="classification (CSV with labels, accuracy) or causal-lm (text, perplexity) (default: %(default)s)")
    g.add_argument("--data", help="causal-lm: a text file, one document per line (default: none; required with --task causal-lm)")
    g.add_argument("--metric", choices=("accuracy", "perplexity"), help="what judges the model (default: accuracy / perplexity by --task)")
    g.add_argument("--select", choices=SELECTIONS, default=option("select").default,
                   help="which blocks go: CKA clusters; lowest Block Influence; the contiguous run of smallest "
                        "angular distance; or a block ranking of mpruner.lm: cka (normalized CKA of each block's "
                        "input and output), influence, angular, update (relative update norm), loo (leave-one-out "
                        "calibration loss), greedy (SLEB: one block per round by calibration loss), auto (the "
                        "best on SmolLM2-135M) (default: %(default)s)")
    g.add_argument("--replace", choices=("linear",), default=option("replace").default,
                   help="linear: each removed run of blocks is replaced by a linear map fitted on --replace-windows "
                        "calibration windows and folded into the previous block's MLP output projection (default: plain removal)")
    g.add_argument("--n", type=int, help="blocks to remove (every --select but cluster) (default: none; give --n or --target-layers)")
    g.add_argument("--target-layers", type=int, help="depth to reach instead of --n (default: none)")
    g.add_argument("--seq-len", type=int, default=256, help="tokens per window (default: %(default)s)")
    g.add_argument("--heldout", type=float, default=0.1, help="fraction of --data lines for perplexity (default: %(default)s)")
    g.add_argument("--calib-windows", type=int, default=32, help="windows for the analysis (default: %(default)s)")
    g.add_argument("--replace-windows", type=int, default=32,
                   help="windows the linear maps of --replace linear are fitted on (they need >= 8 tokens per "
                        "dimension of the residual stream: 4,608 for SmolLM2-135M) (default: %(default)s)")
    g.add_argument("--lora-r", type=int, default=8, help="LoRA rank for healing; 0: full fine-tuning (default: %(default)s)")
    g.add_argument("--heal-tokens", type=token_count,
                   help="healing budget of each attempt in real tokens, e.g. 300k or 1.5M; turns healing on (as "
                        "--max-steps does); the bar shows tokens/s and the ETA (default: none)")
    g.add_argument("--heal-train", type=train_mode,
                   help="what healing trains: lora (adapters, rank --lora-r), all, around-cuts (the kept blocks next "
                        "to each cut, plus the norms) or last:K (the last K blocks, final norm, LM head) (default: "
                        "lora, or all with --lora-r 0)")
    g.add_argument("--distill", action=argparse.BooleanOptionalAction, default=True,
                   help="heal by distillation from the original model (KL divergence to its next-token "
                        "distribution, temperature 2) rather than by the plain next-token loss (default: on)")
    g.add_argument("--heal-checkpoint-every", type=float, default=300.0,
                   help="seconds between checkpoints of the healing in progress in --out/checkpoint, so a killed "
                        "run resumes losing at most that (default: %(default)s)")


def build_causal_lm(args):
    """(model, calib, evaluate, finetune, loop options) for a causal LM directory and a text file."""
    import transformers

    from ..data import corpus_ids, lm_batches, read_texts
    from ..evaluation import perplexity
    from ..training import Finetuner

    if args.metric not in (None, "perplexity"):
        raise ValueError("--task causal-lm is judged by --metric perplexity")
    if not args.data:
        raise ValueError("--task causal-lm needs --data (a text file, one document per line)")
    if not os.path.isfile(os.path.join(args.model, "config.json")):
        raise FileNotFoundError(f"--model {args.model!r} is not a Hugging Face model directory (no config.json)")
    if not 0 < args.heldout < 1:
        raise ValueError(f"--heldout must be a fraction in (0, 1), got {args.heldout}")
    from ..lm.select import check_causal_lm

    config = transformers.AutoConfig.from_pretrained(args.model, local_files_only=True, trust_remote_code=False)
    check_causal_lm(config, f"--task causal-lm (--model {args.model})")  # before any weights load
    tok = transformers.AutoTokenizer.from_pretrained(args.model, local_files_only=True, trust_remote_code=False)
    model = transformers.AutoModelForCausalLM.from_pretrained(args.model, local_files_only=True, trust_remote_code=False)
    texts = read_texts(args.data)
    cut = len(texts) - max(1, int(round(args.heldout * len(texts))))
    if cut < 1:
        raise ValueError(f"--data {args.data!r} has {len(texts)} line(s); it needs some for calibration and some "
                         "held out")
    train_texts, held = texts[:cut], texts[cut:]
    held_ids = corpus_ids(held, tok)
    progress = not args.no_progress
    windows = lm_batches(train_texts, tok, seq_len=args.seq_len, batch_size=args.batch_size)
    calib = [{k: v for k, v in b.items() if k != "labels"} for b in windows][: max(1, args.calib_windows
                                                                              // args.batch_size)]

    def evaluate(m):
        return perplexity(m, held_ids, seq_len=args.seq_len, batch_size=args.batch_size, tokenizer=tok,
                          progress=progress).perplexity

    finetune = None
    if args.max_steps or args.heal_tokens:
        train = args.heal_train or ("all" if args.lora_r == 0 else "lora")
        if args.heal_train == "lora" and args.lora_r == 0:
            raise ValueError("--heal-train lora needs a LoRA rank: --lora-r 8 (or another value >= 1)")
        lora = dict(r=args.lora_r, alpha=2 * args.lora_r) if train == "lora" else None
        if lora is not None and getattr(args, "fsdp", False):
            raise ValueError("--fsdp shards full fine-tuning; LoRA healing trains only small adapters: "
                             "pass --heal-train all (or --lora-r 0) with --fsdp, or drop --fsdp")
        epochs = args.epochs
        if args.heal_tokens:  # passes over the windows enough for the budget
            tokens = sum(int(b["attention_mask"].sum()) for b in windows)
            epochs = max(epochs, -(-args.heal_tokens // max(1, tokens)))
        finetune = Finetuner(windows, epochs=epochs, lr=args.lr, max_steps=args.max_steps, progress=progress,
                             train=train, lora=lora, fsdp=True if getattr(args, "fsdp", False) else None,
                             seed=args.seed, max_tokens=args.heal_tokens,
                             distill=dict(teacher=model) if args.distill else None,
                             checkpoint_every=args.heal_checkpoint_every)
    options = dict(higher_is_better=False, select=args.select, replace=args.replace)
    if args.replace:
        options["replace_data"] = [{k: v for k, v in b.items() if k != "labels"} for b in windows][
            : max(1, args.replace_windows // args.batch_size)]
    if args.select != "cluster":
        options.update(n=args.n, target_layers=args.target_layers)
    return model, calib, evaluate, finetune, options
