"""mpruner.Pipeline: depth -> width -> sparsity, each accepted or rolled back against the original metric."""
import pytest
import torch

import mpruner
from mpruner import sparsity

pytest.importorskip("torch_pruning")
T = pytest.importorskip("transformers")


def tiny_bert(seed=0):
    torch.manual_seed(seed)
    cfg = T.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
                       max_position_embeddings=32)
    return T.BertForSequenceClassification(cfg).eval()


def batches(n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(1, 64, (8, 10), generator=g), "attention_mask": torch.ones(8, 10, dtype=torch.long),
             "labels": torch.randint(0, 2, (8,), generator=g)} for _ in range(n)]


class Metric:
    """A metric that counts its calls; ``fail`` names stages (by call number) that should miss the tolerance."""

    def __init__(self, low_after=None):
        self.calls, self.low_after = 0, low_after

    def __call__(self, model):
        self.calls += 1
        return 0.0 if self.low_after is not None and self.calls > self.low_after else 1.0


def make(metric, tmp_path=None, **kw):
    data = batches()
    calib = [{k: v for k, v in b.items() if k != "labels"} for b in data]
    ft = mpruner.Finetuner(data, max_steps=1, progress=False)
    return mpruner.Pipeline(tiny_bert(), calib, metric, finetune=ft, width=0.25, sparsity=0.5,
                            example_inputs=calib[0], progress=False, checkpoint_dir=tmp_path,
                            depth_kwargs=dict(threshold=0.5, max_iterations=1), **kw)


@pytest.mark.slow
def test_all_stages_accepted_and_recorded(tmp_path):
    pipe = make(Metric(), tmp_path / "ck")
    result = pipe.run()
    assert [s.name for s in result.stages] == ["dense", "depth", "width", "sparsity"]
    assert all(s.accepted for s in result.stages)
    dense, depth, width, sparse = result.stages
    assert depth.params < dense.params and width.params < depth.params
    assert sparse.nonzero < width.nonzero and sparse.params == width.params
    assert width.macs < depth.macs < dense.macs
    assert sparsity.has_masks(result.model)
    summary = mpruner.prune.pipeline.write_pipeline_report(result, tmp_path / "out")
    assert [s["name"] for s in summary["stages"]] == ["dense", "depth", "width", "sparsity"]
    back = T.BertForSequenceClassification.from_pretrained(tmp_path / "out" / "model")
    assert sparsity.count_nonzero(back) == sparse.nonzero
    hub = pytest.importorskip("huggingface_hub")
    data = hub.ModelCard.load(tmp_path / "out" / "model" / "README.md").data.to_dict()
    assert data["tags"] == ["pruned", "mpruner", "depth", "width", "sparsity"]
    assert data["pipeline_tag"] == "text-classification" and data["library_name"] == "transformers"
    numbers = data["mpruner"]
    assert numbers["metric_before"] == summary["metric_before"] and numbers["metric_after"] == summary["metric_after"]
    assert [s["nonzero"] for s in numbers["stages"]] == [s["nonzero"] for s in summary["stages"]]
    assert numbers["weight_sparsity"] > 0.4  # Wanda's 50% of the linear weights (embeddings are no layer)
    assert hub.ModelCard.load(tmp_path / "ck" / "stage-04" / "README.md").data.to_dict()["mpruner"]["stages"]


@pytest.mark.slow
def test_failing_stage_rolls_back_exactly():
    # evaluate: original, depth attempt, width -> fine; sparsity -> 0.0 (fails the tolerance)
    pipe = make(Metric(low_after=3))
    result = pipe.run()
    names = [(s.name, s.accepted) for s in result.stages]
    assert names == [("dense", True), ("depth", True), ("width", True), ("sparsity", False)]
    assert not sparsity.has_masks(result.model)
    assert result.metric_after == 1.0


@pytest.mark.slow
def test_resume_skips_finished_stages(tmp_path):
    first = make(Metric(), tmp_path).run()
    metric = Metric()
    again = make(metric, tmp_path).run(resume=True)
    assert metric.calls == 0
    assert [s.name for s in again.stages] == [s.name for s in first.stages]
    assert sparsity.count_nonzero(again.model) == first.stages[-1].nonzero


def test_shared_calibration_pass_feeds_wanda():
    pipe = make(Metric(), wanda_kwargs={"sequential": False})
    assert pipe.share
    pipe.width = None
    pipe.stage_names = ["depth", "sparsity"]
    result = pipe.run()
    assert result.stages[-1].accepted
    fresh = sparsity.wanda(result.depth.model, pipe.calib_data, sequential=False, progress=False)
    for _, names in sparsity.target_layers(fresh):
        for n in names:
            a = dict(fresh.named_modules())[n].weight_mask
            b = dict(result.model.named_modules())[n].weight_mask
            assert torch.equal(a, b)


def test_bad_stage_arguments():
    with pytest.raises(ValueError, match="example_inputs"):
        mpruner.Pipeline(tiny_bert(), batches(), Metric(), width=0.25)
    with pytest.raises(ValueError, match="conflicts"):
        mpruner.Pipeline(tiny_bert(), batches(), Metric(), sparsity=0.3, pattern="2:4")
