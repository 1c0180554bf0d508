"""``mpruner prune --task causal-lm --judge lm-eval:TASK[,TASK]``: lm-evaluation-harness tasks judge the loop.

The judge replaces the held-out perplexity of ``--data``: an accuracy task (``acc``: higher is
better) or a perplexity-type task (lower is better) decides accept or roll back. The tasks
are checked, and their data read, before the model loads. Under torchrun each rank scores its
share of the documents (:mod:`mpruner.lm.harness_ranks`).
"""
from __future__ import annotations

import shlex
from typing import Optional

from .common import is_factory, positive_int

PREFIX = "lm-eval:"


def add_judge_options(p) -> None:
    g = p.add_argument_group("judged by lm-evaluation-harness (--task causal-lm; pip install 'mpruner[eval]')")
    g.add_argument("--judge", metavar="lm-eval:TASK[,TASK]",
                   help="judge every attempt by lm-eval tasks instead of the held-out perplexity of --data: e.g. "
                        "lm-eval:mpruner_wiki_cloze (accuracy, higher is better) or lm-eval:mpruner_wiki_perplexity "
                        "(word perplexity, lower is better); several tasks are averaged and must agree in direction "
                        "(default: perplexity of --data)")
    g.add_argument("--judge-limit", type=positive_int,
                   help="documents per --judge task (default: all; mpruner_wiki_cloze has 290, "
                        "mpruner_wiki_perplexity 400)")
    g.add_argument("--judge-include", action="append", metavar="PATH",
                   help="a folder (or YAML file) of your own lm-eval tasks for --judge; repeatable (default: lm-eval's "
                        "registry and mpruner's two local tasks)")


def parse_judge(spec: str):
    """``lm-eval:a,b`` -> ``["a", "b"]``."""
    if not isinstance(spec, str) or not spec.startswith(PREFIX):
        raise ValueError(f"--judge {spec!r}: expected {PREFIX}TASK[,TASK], e.g. {PREFIX}mpruner_wiki_cloze")
    from ..lm.harness import task_names

    try:
        return task_names(spec[len(PREFIX):])
    except (TypeError, ValueError) as error:
        raise ValueError(f"--judge {spec!r}: {error}") from None


def make_judge(args):
    """The ``TaskMetric`` of ``--judge`` (None without it), checked before the model loads:
    the flags, lm-eval, the task names and their data, the tokenizer of ``--model``."""
    spec = getattr(args, "judge", None)
    if spec is None:
        for flag in ("judge_limit", "judge_include"):
            if getattr(args, flag, None) is not None:
                raise ValueError(f"--{flag.replace('_', '-')} applies to --judge; add --judge lm-eval:TASK")
        return None
    if getattr(args, "task", "classification") != "causal-lm":
        raise ValueError("--judge lm-eval:... judges causal language models: add --task causal-lm (and --data for "
                         "the calibration text)")
    if getattr(args, "metric", None) is not None:
        raise ValueError(f"--judge decides by the tasks' own metrics; drop --metric {args.metric}")
    names = parse_judge(spec)
    from ..lm.harness import lm_eval_module

    lm_eval_module()  # not installed: the extra to install, before anything loads
    import transformers

    from ..lm.judge import task_metric

    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model, local_files_only=True, trust_remote_code=False)
    judge = task_metric(names, tokenizer, limit=args.judge_limit, include_path=args.judge_include,
                        batch_size=args.batch_size, progress=not args.no_progress)
    if not judge.higher_is_better and any(getattr(args, k, None) is not None for k in ("width", "sparsity", "pattern")):
        raise ValueError(f"--judge {spec}: {judge.name} is lower-is-better, but the later stages (--width, "
                         "--sparsity, --pattern) accept by a higher-is-better metric; judge them by an accuracy "
                         "task such as lm-eval:mpruner_wiki_cloze")
    print(f"mpruner prune: judged by {judge.name} ({'higher' if judge.higher_is_better else 'lower'} is better)",
          flush=True)
    return judge


def metric_label(args, judge) -> dict:
    """What judged the run, for summary.json and the model card."""
    if judge is not None:
        return {"metric": judge.name, "higher_is_better": judge.higher_is_better}
    if getattr(args, "task", "classification") == "causal-lm":
        return {"metric": "held-out perplexity of --data (mpruner.perplexity)", "higher_is_better": False}
    return {"metric": f"--eval {args.eval}" if is_factory(str(args.eval)) else "accuracy", "higher_is_better": True}


def command_line(args) -> Optional[str]:
    argv = getattr(args, "argv", None)
    return None if argv is None else "mpruner " + shlex.join(argv)
