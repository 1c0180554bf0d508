"""`mpruner prune --task causal-lm --judge lm-eval:TASK` (mpruner/cli/judge.py): the loop judged by
an lm-eval task, the model card of the saved folder, and the flags' errors before the model loads."""
import json

import pytest

from mpruner.cli import main
from tests.helpers.harness_lms import HAS_LM_EVAL, WORDS, cloze_task_dir, greedy_cloze, word_tokenizer
from tests.helpers.lm_blocks import IDENTITY, planted

pytestmark = pytest.mark.skipif(not HAS_LM_EVAL, reason="needs lm-eval")
T = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def judged_dir(tmp_path_factory):
    """A tiny LLaMA with a planted identity block, its word tokenizer, a corpus and a cloze task
    of its own greedy continuations (accuracy 1 for the full model)."""
    d = tmp_path_factory.mktemp("judged-llama")
    model = planted("llama", layers=5)
    model.save_pretrained(d / "model")
    word_tokenizer().save_pretrained(d / "model")
    (d / "corpus.txt").write_text("".join(" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(12)) + "\n"
                                          for i in range(40)))
    cloze_task_dir(d / "tasks", greedy_cloze(model), name="own_cloze")
    return d


def _prune(d, out, *extra):
    return main(["prune", "--model", str(d / "model"), "--task", "causal-lm", "--data", str(d / "corpus.txt"),
                 "--seq-len", "16", "--batch-size", "4", "--select", "contiguous", "--n", "1", "--tolerance", "0",
                 "--out", str(out), "--no-progress", *extra])


@pytest.mark.slow
def test_prune_judged_by_a_cloze_task_writes_a_card_with_its_numbers(judged_dir, tmp_path, capsys):
    hub = pytest.importorskip("huggingface_hub")
    out = tmp_path / "run"
    rc = _prune(judged_dir, out, "--judge", "lm-eval:own_cloze", "--judge-include", str(judged_dir / "tasks"))
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "judged by lm-eval:own_cloze/acc (higher is better)" in printed.out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric_before"] == 1.0 and summary["metric_after"] == 1.0
    assert summary["layers_after"] == 4 and summary["removed"] == [[f"model.layers.{IDENTITY}"]]
    assert summary["metric"] == "lm-eval:own_cloze/acc" and summary["higher_is_better"] is True
    card = hub.ModelCard.load(out / "model" / "README.md")
    numbers = card.data.to_dict()["mpruner"]
    for key in ("metric", "metric_before", "metric_after", "layers_before", "layers_after", "removed"):
        assert numbers[key] == summary[key], key
    assert "--judge lm-eval:own_cloze" in card.text and card.data.pipeline_tag == "text-generation"
    model = T.AutoModelForCausalLM.from_pretrained(out / "model")
    assert model.config.num_hidden_layers == 4


INCLUDE = "<tasks>"


@pytest.mark.parametrize("extra, words", [
    (["--judge", "own_cloze"], "expected lm-eval:TASK[,TASK]"),
    (["--judge", "lm-eval:"], "--judge 'lm-eval:'"),
    (["--judge", "lm-eval:own_cloze", "--judge-include", INCLUDE, "--metric", "perplexity"],
     "drop --metric perplexity"),
    (["--judge-limit", "3"], "--judge-limit applies to --judge"),
    (["--judge", "lm-eval:own_cloze", "--judge-include", INCLUDE, "--judge-limit", "0"], "--judge-limit"),
    (["--judge", "lm-eval:own_cloze", "--judge-include", "/no/such/folder"], "is not a folder"),
])
def test_bad_judge_flags_fail_before_the_model_loads(judged_dir, tmp_path, capsys, extra, words):
    extra = [str(judged_dir / "tasks") if e == INCLUDE else e for e in extra]
    try:
        rc = _prune(judged_dir, tmp_path / "run", *extra)
    except SystemExit as stop:  # argparse's own check of a flag's type
        rc = stop.code
    printed = capsys.readouterr()
    assert rc != 0 and words in printed.err
    assert "loading" not in printed.out


def test_judge_needs_the_causal_lm_task(judged_dir, tmp_path, capsys):
    rc = main(["prune", "--model", str(judged_dir / "model"), "--calib", str(judged_dir / "corpus.txt"), "--eval",
               str(judged_dir / "corpus.txt"), "--judge", "lm-eval:own_cloze", "--out", str(tmp_path / "o"),
               "--no-progress"])
    printed = capsys.readouterr()
    assert rc == 1 and "add --task causal-lm" in printed.err and "loading" not in printed.out


def test_a_lower_is_better_judge_is_refused_for_the_later_stages(judged_dir, tmp_path, capsys):
    rolling = (judged_dir / "rolling")
    rolling.mkdir(exist_ok=True)
    (rolling / "own_text.jsonl").write_text(json.dumps({"text": " ".join(WORDS[:20])}) + "\n")
    from mpruner.lm.tasks import HERE

    yaml = (HERE / "mpruner_wiki_perplexity.yaml").read_text().replace("task: mpruner_wiki_perplexity",
                                                                       "task: own_text")
    (rolling / "own_text.yaml").write_text(yaml.replace("test: mpruner_wiki_perplexity.jsonl",
                                                        f"test: {json.dumps(str(rolling / 'own_text.jsonl'))}"))
    rc = _prune(judged_dir, tmp_path / "run", "--judge", "lm-eval:own_text", "--judge-include", str(rolling),
                "--sparsity", "0.5")
    printed = capsys.readouterr()
    assert rc == 1 and "lower-is-better" in printed.err and "loading" not in printed.out
