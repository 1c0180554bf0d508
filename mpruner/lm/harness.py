"""``evaluate``: lm-evaluation-harness on a model in memory (a pruned one: no save round trip).

lm-eval's ``simple_evaluate`` through its ``HFLM`` wrapper, on any registered task or a local
one (``include_path``: folders of task YAML files; ``dataset_path: json`` with ``data_files`` needs
no download). The two tasks mpruner ships (:mod:`mpruner.lm.tasks`) are built and found by
name. Everything that can be checked is checked before the model runs: that lm-eval is
installed, the task names, ``limit``, the model and the tokenizer.
"""
from __future__ import annotations

import contextlib
import difflib
import functools
import logging
import os
import random
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from . import tasks as local_tasks

EXTRA = "pip install 'mpruner[eval]'"
MIN_VERSION = (0, 4, 13)  # HFLM's all_gather/gather_object/barrier hooks and TaskManager.load
_CAUSAL_CLASSES = ("ForCausalLM", "LMHeadModel")


def lm_eval_module():
    """The installed ``lm_eval`` (>= 0.4.13, < 0.5), or an ImportError that names the extra."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM  # noqa: F401 - needs transformers too
    except ImportError as error:
        raise ImportError(f"mpruner.lm.evaluate runs lm-evaluation-harness, which is not installed ({error}): "
                          f"{EXTRA} (lm-eval >= 0.4.13, < 0.5)") from None
    found = tuple(int(p) if p.isdigit() else 0 for p in getattr(lm_eval, "__version__", "0").split(".")[:3])
    if not MIN_VERSION <= found < (0, 5):
        raise ImportError(f"mpruner.lm.evaluate needs lm-eval >= 0.4.13, < 0.5, found {lm_eval.__version__}: {EXTRA}")
    return lm_eval


def task_names(tasks: Union[str, Sequence[str]]) -> List[str]:
    """``"a,b"`` or ``["a", "b"]`` as a list of names; refuses an empty or malformed one."""
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",")]
    if not isinstance(tasks, (list, tuple)) or not all(isinstance(t, str) for t in tasks):
        raise TypeError(f"tasks must be a task name, 'name,name' or a list of names, got {type(tasks).__name__}")
    names = [t.strip() for t in tasks]
    if not names or not all(names):
        raise ValueError(f"tasks must name at least one lm-eval task and no empty one, got {tasks!r} "
                         f"(mpruner ships {', '.join(local_tasks.TASKS)})")
    if len(set(names)) != len(names):
        raise ValueError(f"tasks names a task twice: {names}")
    return names


def check_limit(limit) -> Optional[int]:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be an integer >= 1 (documents per task) or None (all), got {limit!r}")
    return limit


def check_causal_lm(model) -> None:
    """A Hugging Face ``...ForCausalLM`` / ``...LMHeadModel`` is what lm-eval's HFLM scores."""
    from transformers import PreTrainedModel

    from .select import check_causal_lm as check_family

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a Hugging Face causal LM (transformers.PreTrainedModel), got "
                        f"{type(model).__name__}")
    check_family(model, "mpruner.lm.evaluate")  # a known family that is no decoder LM: named as such
    if not isinstance(model, PreTrainedModel) or not type(model).__name__.endswith(_CAUSAL_CLASSES):
        raise ValueError(f"mpruner.lm.evaluate needs a Hugging Face causal LM with its head (a ...ForCausalLM or "
                         f"...LMHeadModel, e.g. AutoModelForCausalLM.from_pretrained), got {type(model).__name__}; "
                         "unwrap DDP/FSDP/PEFT wrappers first (merge LoRA: mpruner.lm.merge_lora)")


def check_tokenizer(tokenizer) -> None:
    from transformers import PreTrainedTokenizerBase

    if not isinstance(tokenizer, PreTrainedTokenizerBase):
        raise TypeError(f"tokenizer must be the model's Hugging Face tokenizer (AutoTokenizer.from_pretrained), got "
                        f"{type(tokenizer).__name__}")
    if tokenizer.bos_token_id is None and tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer defines neither a BOS nor an EOS token; lm-eval starts every document from "
                         "one of them (set tokenizer.eos_token)")


def _include_paths(include_path) -> List[str]:
    if include_path is None:
        return []
    paths = [include_path] if isinstance(include_path, (str, os.PathLike)) else list(include_path)
    out = []
    for p in paths:
        if not isinstance(p, (str, os.PathLike)) or not Path(p).is_dir():
            raise FileNotFoundError(f"include_path {p!r} is not a folder; pass folders of lm-eval task YAML files")
        out.append(str(Path(p).resolve()))
    return out


@functools.lru_cache(maxsize=8)
def _task_manager(include: Tuple[str, ...], defaults: bool):
    # Indexing lm-eval's own ~15,000 task files takes seconds: done once per process, and only
    # when a name is not among the local tasks.
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(include) or None, include_defaults=defaults)


def task_manager(names: Sequence[str], include_path=None):
    """lm-eval's ``TaskManager`` that knows ``names``: mpruner's tasks (built on first use), the
    ``include_path`` folders, and lm-eval's registry when a name is neither. Unknown names raise
    a ValueError with lm-eval's own message, close matches and the local tasks mpruner ships."""
    lm_eval_module()
    include = _include_paths(include_path)
    if any(n in local_tasks.TASKS for n in names):
        include = [str(local_tasks.build_tasks())] + include
    manager = _task_manager(tuple(include), False) if include else None
    if manager is None or not all(_known(manager, n) for n in names):
        manager = _task_manager(tuple(include), True)
    unknown = [n for n in names if not _known(manager, n)]
    if unknown:
        try:
            manager.load([unknown[0]])
            said = ""
        except (KeyError, ValueError) as error:  # lm-eval's own words for an unknown name
            said = f" (lm-eval: {str(error).strip(chr(34) + chr(39))})"
        known = list(manager.all_tasks) + list(local_tasks.TASKS)
        close = sorted({m for n in unknown for m in difflib.get_close_matches(n, known, n=3)})
        raise ValueError(f"unknown lm-eval task(s) {unknown}{said}; {'close matches: ' + ', '.join(close) + '; ' if close else ''}"
                         f"mpruner ships the local tasks {', '.join(local_tasks.TASKS)} (no download); "
                         "add your own with include_path= (a folder of task YAML files)")
    return manager


def _known(manager, name: str) -> bool:
    return name in manager.all_tasks or (name.endswith((".yaml", ".yml")) and Path(name).is_file())


@contextlib.contextmanager
def _preserved(model: nn.Module):
    """lm-eval seeds Python, NumPy and torch and puts the model in eval mode: both put back."""
    import numpy as np

    modes = [(m, m.training) for m in model.modules()]
    states = (random.getstate(), np.random.get_state(), torch.get_rng_state(),
              torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if states[3] is not None:
            torch.cuda.set_rng_state_all(states[3])


class _PassedModelNotice(logging.Filter):
    """Drops HFLM's two warnings about a model passed in memory: that is this wrapper's purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return "not of type `str`" not in text and "already-initialized model" not in text


@contextlib.contextmanager
def _quiet(progress: bool):
    """Without ``progress``: lm-eval's bars (per batch, tokenizing, bootstrapping) and datasets'
    bars off, for this call only."""
    import sys

    import lm_eval.models.huggingface as hf_module
    from tqdm import tqdm as bar_class

    import lm_eval.evaluator as evaluator_module

    notice = _PassedModelNotice()
    logger = logging.getLogger(hf_module.__name__)
    logger.addFilter(notice)
    swapped = []
    if hasattr(evaluator_module, "get_git_commit_hash"):
        swapped.append((evaluator_module, "get_git_commit_hash", evaluator_module.get_git_commit_hash))
        evaluator_module.get_git_commit_hash = _git_hash_quietly
    bars_were_on = None
    if not progress:
        from datasets.utils import logging as ds_logging

        bars_were_on = ds_logging.is_progress_bar_enabled()
        ds_logging.disable_progress_bar()
        for name, module in list(sys.modules.items()):
            original = getattr(module, "tqdm", None) if name.startswith("lm_eval") else None
            if isinstance(original, type) and issubclass(original, bar_class):
                setattr(module, "tqdm", _silent(original))
                swapped.append((module, "tqdm", original))
    try:
        yield
    finally:
        logger.removeFilter(notice)
        for module, name, original in swapped:
            setattr(module, name, original)
        if bars_were_on:
            from datasets.utils import logging as ds_logging

            ds_logging.enable_progress_bar()


@contextlib.contextmanager
def _alone(alone: bool):
    """An evaluation on this rank alone under torchrun: lm-eval returns results only where
    ``LOCAL_RANK`` is 0 (its tensor-parallel rule), so it reads 0 for this call."""
    saved = os.environ.get("LOCAL_RANK")
    if alone and saved is not None:
        os.environ["LOCAL_RANK"] = "0"
    try:
        yield
    finally:
        if alone and saved is not None:
            os.environ["LOCAL_RANK"] = saved


def _git_hash_quietly():
    """lm-eval's ``get_git_commit_hash`` (the working directory's commit, for the results'
    ``git_hash``) without git's "fatal: not a git repository" on stderr outside a repository."""
    import subprocess

    from lm_eval.loggers.utils import get_commit_from_path

    try:
        return subprocess.check_output(["git", "describe", "--always"], stderr=subprocess.DEVNULL).strip().decode()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return get_commit_from_path(os.getcwd())


def _silent(bar_class):
    class Silent(bar_class):  # HFLM passes disable= itself: a partial would be overridden
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "disable": True})

    return Silent


def evaluate(model: nn.Module, tokenizer, tasks: Union[str, Sequence[str]], *, include_path=None,
             limit: Optional[int] = None, batch_size: int = 8, num_fewshot: Optional[int] = None,
             max_length: Optional[int] = None, progress: bool = True, distributed="auto", **simple_evaluate_kwargs
             ) -> dict:
    """lm-eval's results dict for ``model`` (in memory) on ``tasks``.

    Args:
        model: a Hugging Face causal LM (``...ForCausalLM``), pruned or not; evaluated where it
            is (its device and dtype). Its modules' train/eval modes and the global random
            states (Python, NumPy, torch), which lm-eval sets, are restored afterwards.
        tokenizer: the model's Hugging Face tokenizer.
        tasks: task names (``"a,b"`` or a list): lm-eval's registry, ``include_path`` tasks, or
            mpruner's local ``mpruner_wiki_perplexity`` and ``mpruner_wiki_cloze``.
        include_path: a folder (or a list of folders) of your own lm-eval task YAML files.
        limit: at most this many documents per task (an integer >= 1; None: all).
        batch_size: requests per forward pass.
        num_fewshot: few-shot examples (None: each task's default, else 0).
        max_length: tokens per window (None: lm-eval reads the model's config).
        progress: lm-eval's progress bars.
        distributed: ``"auto"``: under torchrun (a process group of W > 1 ranks) each rank
            scores every W-th document and lm-eval gathers the per-document metrics on rank 0,
            whose results every rank returns; ``False``: every rank evaluates everything.
        **simple_evaluate_kwargs: passed on to ``lm_eval.simple_evaluate`` (``log_samples``,
            ``bootstrap_iters``, ``random_seed``, ...).

    Returns:
        ``simple_evaluate``'s dict: ``results[task]["acc,none"]``, ``"word_perplexity,none"``, ...,
        ``higher_is_better``, ``samples`` (per-document responses), ``config``, versions.
    """
    prepared = prepare(model, tokenizer, tasks, include_path=include_path, limit=limit, batch_size=batch_size,
                       num_fewshot=num_fewshot, max_length=max_length, distributed=distributed)
    return run(prepared, progress=progress, **simple_evaluate_kwargs)


def prepare(model, tokenizer, tasks, *, include_path=None, limit=None, batch_size=8, num_fewshot=None,
            max_length=None, distributed="auto") -> dict:
    """Every check of :func:`evaluate`, before the model runs; the arguments of :func:`run`."""
    lm_eval_module()
    names = task_names(tasks)
    limit = check_limit(limit)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if num_fewshot is not None and (isinstance(num_fewshot, bool) or not isinstance(num_fewshot, int)
                                    or num_fewshot < 0):
        raise ValueError(f"num_fewshot must be an integer >= 0 or None, got {num_fewshot!r}")
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2):
        raise ValueError(f"max_length must be an integer >= 2 or None, got {max_length!r}")
    check_causal_lm(model)
    check_tokenizer(tokenizer)
    from .harness_ranks import shard_for

    shard = shard_for(model, distributed)
    manager = task_manager(names, include_path)
    return dict(model=model, tokenizer=tokenizer, names=names, manager=manager, limit=limit, batch_size=batch_size,
                num_fewshot=num_fewshot, max_length=max_length, shard=shard)


def run(prepared: dict, *, progress: bool = True, **simple_evaluate_kwargs) -> dict:
    """``simple_evaluate`` on what :func:`prepare` checked; rank 0's results on every rank."""
    from lm_eval import simple_evaluate

    from .harness_ranks import ranked_lm_class, share_results

    model, shard = prepared["model"], prepared["shard"]
    with _preserved(model), _quiet(progress), _alone(shard is None):
        lm = ranked_lm_class()(pretrained=model, tokenizer=prepared["tokenizer"], batch_size=prepared["batch_size"],
                               max_length=prepared["max_length"], shard=shard)
        results = simple_evaluate(model=lm, tasks=list(prepared["names"]), task_manager=prepared["manager"],
                                  limit=prepared["limit"], num_fewshot=prepared["num_fewshot"],
                                  **simple_evaluate_kwargs)
    return share_results(results, shard)
