"""Every public name of mpruner 0.1.0 still imports: each package's ``__all__``, and the names of
the modules that moved to their own homes under their old import paths (with a
``DeprecationWarning`` naming the new place), so code written against 0.1.0 keeps running for
one more release.
"""
import importlib
import sys
import warnings

import pytest

import mpruner
from mpruner.moved import OLD_MODULES

# The public names of mpruner 0.1.0 (each package's __all__), which must keep importing.
PACKAGE_NAMES = {'mpruner': ['Analysis', 'BlockList', 'CKAAccumulator', 'Finetuner', 'MPruner', 'ModelStats', 'PerplexityResult',
             'Pipeline', 'PruneResult', '__version__', 'analyze', 'build_info', 'center_gram', 'cka', 'cka_matrix',
             'cluster_layers', 'cuda_built', 'data', 'find_blocks', 'get_record', 'gram', 'hsic', 'load_pruned',
             'model_stats', 'perplexity', 'read_record', 'reference', 'removable_layers', 'remove_layers',
             'save_pruned', 'select_layers', 'sparsity', 'token_cka', 'width'],
 'mpruner.adapters': ['ADAPTERS', 'Adapter', 'BertAdapter', 'BlockList', 'DistilBertAdapter',
                      'EfficientNetLiteAdapter', 'GPT2Adapter', 'GenericAdapter', 'HFResNetAdapter', 'LlamaAdapter',
                      'SUPPORTED_HF_MODEL_TYPES', 'T5Adapter', 'TorchvisionResNetAdapter', 'ViTAdapter',
                      'detect_adapter', 'find_blocks', 'resolve_adapter'],
 'mpruner.analysis': ['Analysis', 'LayerSelection', 'VIEWS', 'analyze', 'select_layers'],
 'mpruner.cli': ['build_parser', 'cmd_info', 'main'],
 'mpruner.data': ['Batches', 'FASHION_MNIST_CLASSES', 'FASHION_MNIST_DIRS', 'ImageDataset', 'TextDataset', 'digits',
                  'fashion_mnist', 'image_batches', 'read_texts', 'rotten_tomatoes', 'smollm2', 'text_batches',
                  'wikipedia_summaries'],
 'mpruner.engine': ['CKAAccumulator', 'build_info', 'center_gram', 'cka', 'cka_matrix', 'cuda_built', 'gram',
                    'hsic', 'reference', 'token_cka', 'token_cosine'],
 'mpruner.lm': ['PerplexityResult', 'corpus_ids', 'lm_batches', 'merge_lora', 'perplexity', 'wrap_lora'],
 'mpruner.prune': ['Finetuner', 'Iteration', 'MPruner', 'Pipeline', 'PipelineResult', 'PruneResult', 'Stage',
                   'adjacent_similarities', 'auto_threshold', 'cluster_layers', 'select_layers'],
 'mpruner.sparsity': ['InputNorms', 'SparsityReport', 'attach_masks', 'count_nonzero', 'frozen_copy', 'has_masks',
                      'make_permanent', 'masks_from_zeros', 'parse_pattern', 'refresh_masked_weights', 'report',
                      'target_layers', 'to_semi_structured', 'wanda', 'wanda_masks'],
 'mpruner.surgery': ['ModelStats', 'get_record', 'load_pruned', 'model_stats', 'read_record', 'removable_layers',
                     'remove_layers', 'save_pruned'],
 'mpruner.width': ['IMPORTANCES', 'prune_width']}

# Modules that moved, with the public names they defined: their old paths keep importing.
MOVED_MODULE_NAMES = {'mpruner.analysis.cli': ['add_analyze_parser', 'auto_layers', 'build', 'check_args', 'check_out_dir',
                          'check_source', 'cli_message', 'cmd_analyze', 'is_factory', 'load_factory',
                          'no_library_bars', 'positive_int', 'report'],
 'mpruner.analysis.distributed': ['Shard', 'reduce_sink', 'resolve', 'sum_over_ranks'],
 'mpruner.analysis.inputs': ['batch_context', 'call_model', 'check_data', 'model_device', 'to_device'],
 'mpruner.bench.cli': ['add_parser', 'method_names', 'replot', 'run'],
 'mpruner.bench.report': ['add_roofline', 'clean', 'evaluate_goals', 'fmt_bytes', 'fmt_ratio', 'fmt_time',
                          'markdown_report', 'markdown_table', 'plot_headline', 'plot_scaling', 'profile_text',
                          'table', 'write_json'],
 'mpruner.engine.inputs': ['as_layer_list', 'as_samples', 'check_choice', 'check_sigma', 'compiling', 'device_path',
                           'gemm_precision', 'min_samples', 'prepare_layers'],
 'mpruner.lm.batches': ['lm_batches'],
 'mpruner.lm.lora': ['check_lora_options', 'merge_lora', 'wrap_lora'],
 'mpruner.lm.perplexity': ['PerplexityResult', 'corpus_ids', 'perplexity'],
 'mpruner.prune.accelerated': ['check_world', 'make_accelerator', 'mixed_precision', 'release'],
 'mpruner.prune.batch_split': ['split_batch'],
 'mpruner.prune.cli': ['add_parsers', 'cmd_demo', 'cmd_prune'],
 'mpruner.prune.cli_lm': ['add_lm_options', 'build_causal_lm'],
 'mpruner.prune.demo': ['DemoConfig', 'TextScenario', 'VisionScenario', 'accuracy', 'cache_root', 'run_demo'],
 'mpruner.prune.demo_lm': ['LMDemoConfig', 'format_table', 'run_lm_demo'],
 'mpruner.prune.distributed': ['Ranks', 'init_from_environment', 'lost_contact'],
 'mpruner.prune.finetune': ['Finetuner', 'default_loss'],
 'mpruner.prune.pipeline_cli': ['add_stage_options', 'run_pipeline', 'wants_stages'],
 'mpruner.prune.report': ['save_model', 'write_report'],
 'mpruner.prune.sharded': ['ShardedDriver', 'check_fsdp_options', 'gather_into', 'shard_copy'],
 'mpruner.prune.shared': ['SharedCalibration'],
 'mpruner.sparsity.report': ['LayerSparsity', 'SparsityReport', 'count_nonzero', 'report']}

# Renamed: old name -> (where the new one lives, its new name).
RENAMED = {("mpruner", "select_layers"): "redundant_members", ("mpruner.prune", "select_layers"): "redundant_members",
           ("mpruner.analysis", "select_layers"): "resolve_layers", ("mpruner.prune", "Finetuner"): "Finetuner",
           ("mpruner.prune.cluster", "select_layers"): "redundant_members",
           ("mpruner.analysis.layers", "select_layers"): "resolve_layers"}


@pytest.mark.parametrize("package", sorted(PACKAGE_NAMES))
def test_package_names_of_0_1_still_import(package):
    module = importlib.import_module(package)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        missing = [name for name in PACKAGE_NAMES[package] if not hasattr(module, name)]
    assert not missing, f"{package} lost {missing}"


@pytest.mark.parametrize("old, new", sorted(RENAMED.items()))
def test_renamed_names_warn_and_name_the_new_one(old, new):
    package, name = old
    module = importlib.import_module(package)
    with pytest.warns(DeprecationWarning, match=rf"{package}\.{name} is deprecated .* use \S*\.{new}$"):
        value = getattr(module, name)
    assert value.__name__ == new and name not in getattr(module, "__all__", [])


@pytest.mark.parametrize("old", sorted(MOVED_MODULE_NAMES))
def test_moved_module_imports_under_its_old_path(old):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match=rf"{old} is deprecated .* use mpruner\."):
        module = importlib.import_module(old)
    missing = [name for name in MOVED_MODULE_NAMES[old] if not hasattr(module, name)]
    assert not missing, f"{old} lost {missing}"
    new = importlib.import_module(OLD_MODULES[old][0])
    shared = [n for n in MOVED_MODULE_NAMES[old] if hasattr(new, n)]
    assert all(getattr(module, n) is getattr(new, n) for n in shared)  # the very objects, not copies


@pytest.mark.parametrize("package, name", [("mpruner.lm", "perplexity"), ("mpruner.sparsity", "report")])
def test_a_moved_module_named_like_its_packages_function_leaves_the_function_working(package, name):
    import torch.nn as nn

    module = importlib.import_module(package)
    function = getattr(module, name)
    sys.modules.pop(f"{package}.{name}", None)
    with pytest.warns(DeprecationWarning):
        importlib.import_module(f"{package}.{name}")  # the import system sets it on the package
    try:
        if name == "report":
            assert getattr(module, name)(nn.Linear(3, 2)).total_params == 8  # still the function's answer
        else:
            with pytest.raises(TypeError, match="data must be"):
                getattr(module, name)(nn.Linear(3, 2), data=3.5)
    finally:
        setattr(module, name, function)


def test_an_unknown_name_is_still_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        mpruner.nothing_here
    with pytest.raises(ImportError):
        importlib.import_module("mpruner.prune.nothing_here")


def test_old_paths_are_the_only_aliases():
    # Every alias points at a module that exists, and no alias shadows a real module.
    for old, targets in OLD_MODULES.items():
        assert importlib.util.find_spec(old.rpartition(".")[0]) is not None
        for target in targets:
            assert importlib.import_module(target) is not None, target
