"""``mpruner demo``: MPruner end to end on a real pretrained model, offline."""
from __future__ import annotations

import glob
import os
import sys
import textwrap

from .common import check_out_dir, check_resume, threshold_value, tolerance_value
from .prune import flag_message


def add_parser(sub) -> None:
    """Registers ``demo`` on the ``mpruner`` command's subparsers."""
    d = sub.add_parser("demo", help="MPruner end to end on a real pretrained model, offline",
                       description=textwrap.fill(
                           "Fine-tune a real pretrained model (cached for the next run), then prune it with "
                           "MPruner, all offline; writes a report, heatmaps and the pruned model (with its "
                           "tokenizer) into --out.", 90))
    d.add_argument("--scenario", choices=("text", "vision", "lm"), default="text",
                   help="text: all-MiniLM-L6-v2 on Rotten Tomatoes; vision: EfficientNet-Lite0 on Fashion-MNIST; "
                        "lm: SmolLM2-135M on Wikipedia summaries, judged by perplexity (default: %(default)s)")
    d.add_argument("--out", default=os.path.join("runs", "demo"), help="output directory (default: %(default)s)")
    d.add_argument("--quick", action="store_true",
                   help="a tiny smoke run (under a minute of CPU time; accuracies not meaningful) (default: off)")
    d.add_argument("--resume", action="store_true",
                   help="continue an interrupted demo from --out/checkpoint (refused when there is none) "
                        "(default: start afresh)")
    d.add_argument("--threshold", type=threshold_value, help="CKA threshold in (0, 1], or 'auto' (default: auto)")
    d.add_argument("--tolerance", type=tolerance_value,
                   help="allowed accuracy drop for text and vision (default: 0.01); for lm the allowed relative "
                        "perplexity increase of every goal (default: each goal's own, 0.30 at 8 blocks, 0.10 at 4)")
    d.add_argument("--no-progress", action="store_true",
                   help="no progress bars; one line per stage and attempt is still printed (default: bars on)")
    d.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from ..demos import run_demo, run_lm_demo

    try:
        check_out_dir(args.out)
        if args.scenario == "lm":
            if args.resume and not glob.glob(os.path.join(args.out, "n*-checkpoint", "state.json")):
                raise ValueError(f"--resume: there is no checkpoint in {args.out}/n*-checkpoint to continue from; run "
                                 f"without --resume to start, or pass the --out of the interrupted run")
            run_lm_demo(args.out, quick=args.quick, progress=not args.no_progress, tolerance=args.tolerance,
                        resume=args.resume)
            return 0
        check_resume(args)
        run_demo(args.scenario, args.out, quick=args.quick, progress=not args.no_progress, resume=args.resume,
                 threshold=args.threshold, tolerance=args.tolerance)
    except (ImportError, FileNotFoundError, ValueError) as e:
        print(f"mpruner demo: error: {flag_message(e)}", file=sys.stderr)
        return 1
    return 0
