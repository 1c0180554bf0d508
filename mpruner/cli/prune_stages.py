"""``mpruner prune --width R --sparsity S --pattern N:M``: the stages after depth pruning."""
from __future__ import annotations

import os


def add_stage_options(p) -> None:
    g = p.add_argument_group("after depth pruning (each stage fine-tuned, then accepted or rolled back)")
    g.add_argument("--width", type=float, help="width pruning: fraction of MLP channels / heads / conv channels "
                                               "to remove (needs torch-pruning) (default: no width stage)")
    g.add_argument("--sparsity", type=float, help="Wanda sparsity: fraction of weights zeroed per row (default: no sparsity stage; "
                                                 "0.5 with --pattern unset)")
    g.add_argument("--pattern", help="Wanda N:M pattern such as 2:4 (implies the sparsity) (default: unstructured)")
    g.add_argument("--no-depth", action="store_true", help="skip depth pruning, run only the later stages (default: depth first)")


def wants_stages(args) -> bool:
    return any(getattr(args, k, None) is not None for k in ("width", "sparsity", "pattern")) or \
        getattr(args, "no_depth", False)


def run_pipeline(args, model, calib, evaluate, finetune, layers=None, analyze_kwargs=None) -> int:
    from ..prune.pipeline import Pipeline, write_pipeline_report
    from .common import tolerance_of

    calib = list(calib)
    depth_kwargs = dict(layers=args.layers if layers is None else layers, threshold=args.threshold if args.threshold == "auto" else float(args.threshold),
                        max_granularity=args.max_granularity, max_iterations=args.max_iterations, view=args.view)
    if analyze_kwargs:
        depth_kwargs["analyze_kwargs"] = dict(analyze_kwargs)
    pipe = Pipeline(model, calib, evaluate, finetune=finetune, depth=not args.no_depth, width=args.width,
                    sparsity=args.sparsity, pattern=args.pattern, tolerance=tolerance_of(args),
                    tolerance_mode=args.tolerance_mode, checkpoint_dir=os.path.join(args.out, "checkpoint"),
                    example_inputs=calib[0], progress=not args.no_progress, depth_kwargs=depth_kwargs,
                    seed=args.seed)
    result = pipe.run(resume=args.resume)
    from .judge import command_line, metric_label

    judge = evaluate if isinstance(getattr(evaluate, "higher_is_better", None), bool) else None
    summary = write_pipeline_report(result, args.out, extra={"model_source": args.model, **metric_label(args, judge)},
                                    card={"command": command_line(args)})
    print(result.summary())
    print(f"wrote {args.out}: summary.json (every stage), model/ ({summary['model_saved_with']})")
    return 0
