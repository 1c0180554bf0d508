"""``mpruner prune --task causal-lm``: a decoder LM judged by held-out perplexity.

The text file (``--data``, one document per line) is split in file order: the last
``--heldout`` lines (default 10%) are the perplexity text, the rest feeds the analysis
(calibration windows) and the healing (LoRA with ``--lora-r``, or full fine-tuning with
``--lora-r 0``; none without ``--max-steps``).
"""
from __future__ import annotations

import os

from ..prune.options import option
from ..prune.strategies import SELECTIONS


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
                   help="linear: each removed run of blocks is replaced by a linear map fitted on the calibration "
                        "windows and folded into the previous block's MLP output projection (default: plain removal)")
    g.add_argument("--n", type=int, help="blocks to remove (every --select but cluster) (default: none; give --n or --target-layers)")
    g.add_argument("--target-layers", type=int, help="depth to reach instead of --n (default: none)")
    g.add_argument("--seq-len", type=int, default=256, help="tokens per window (default: %(default)s)")
    g.add_argument("--heldout", type=float, default=0.1, help="fraction of --data lines for perplexity (default: %(default)s)")
    g.add_argument("--calib-windows", type=int, default=32, help="windows for the analysis (default: %(default)s)")
    g.add_argument("--lora-r", type=int, default=8, help="LoRA rank for healing; 0: full fine-tuning (default: %(default)s)")


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
    if args.max_steps:
        lora = None if args.lora_r == 0 else dict(r=args.lora_r, alpha=2 * args.lora_r)
        if lora is not None and getattr(args, "fsdp", False):
            raise ValueError("--fsdp shards full fine-tuning; LoRA healing trains only small adapters: "
                             "pass --lora-r 0 with --fsdp, or drop --fsdp")
        finetune = Finetuner(windows, epochs=args.epochs, lr=args.lr, max_steps=args.max_steps, progress=progress,
                             lora=lora, fsdp=True if getattr(args, "fsdp", False) else None, seed=args.seed)
    options = dict(higher_is_better=False, select=args.select, replace=args.replace)
    if args.select != "cluster":
        options.update(n=args.n, target_layers=args.target_layers)
    return model, calib, evaluate, finetune, options
