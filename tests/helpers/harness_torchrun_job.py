"""mpruner.lm.evaluate and task_metric under torchrun, for tests/lm/test_harness_ranks.py.

    torchrun --standalone --nproc_per_node 2 tests/helpers/harness_torchrun_job.py OUT [--no-shard]

Every rank builds the same tiny LLaMA and tokenizer, evaluates both local tasks on the first
LIMIT documents and runs the cloze judge; each rank writes OUT.<rank>.json: the results, the
judge's value and how many sequences its model was given.
"""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

LIMIT = 7  # odd: the ranks' shares differ (4 and 3), so lm-eval's padding requests take part


def run(out: str, shard: bool = True) -> None:
    import torch.distributed as dist

    import mpruner
    from mpruner.distributed import init_from_environment
    from tests.helpers.harness_lms import byte_tokenizer, text_lm, wiki_texts

    init_from_environment()
    tokenizer = byte_tokenizer(wiki_texts(40))
    model = text_lm("llama", tokenizer.vocab_size)
    seen = {"sequences": 0}
    model.register_forward_hook(lambda m, args, kwargs, output: seen.__setitem__(
        "sequences", seen["sequences"] + int(kwargs.get("input_ids", args[0] if args else None).shape[0])),
        with_kwargs=True)
    distributed = "auto" if shard else False
    results = mpruner.lm.evaluate(model, tokenizer, list(mpruner.lm.LOCAL_TASKS), limit=LIMIT, progress=False,
                                  distributed=distributed, log_samples=False)
    judge = mpruner.lm.task_metric("mpruner_wiki_cloze", tokenizer, limit=LIMIT, distributed=distributed)
    value = judge(model)
    rank = dist.get_rank() if dist.is_initialized() else 0
    with open(f"{out}.{rank}.json", "w") as f:
        json.dump({"results": results["results"], "judge": value, "sequences": seen["sequences"]}, f, default=str)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    run(sys.argv[1], shard="--no-shard" not in sys.argv[2:])
