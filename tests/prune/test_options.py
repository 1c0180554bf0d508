"""The MPruner options (mpruner/prune/options.py) as a checkpoint records them."""
import mpruner
from tests.helpers import prune_job


# The options are state.json's format: a checkpoint written before must still resume, so the
# keys and when they appear are pinned (a run that writes and compares its own spelling would
# not notice a key renamed or a condition flipped).
def test_loop_options_recorded_in_the_checkpoint():
    model, train, _ = prune_job.build()
    calib = [x for x, _ in train]
    base = {"block_list": "blocks", "threshold": 0.98, "tolerance": 0.01, "tolerance_mode": "absolute",
            "max_granularity": 3, "max_iterations": 10, "view": "mean", "cluster_method": "anchor", "seed": 0}
    p = mpruner.MPruner(model, calib, lambda m: 1.0, layers="blocks", progress=False)
    assert p._options() == base
    p = mpruner.MPruner(model, calib, lambda m: 1.0, layers="blocks", progress=False, higher_is_better=False,
                        select="contiguous", n=1, tolerance_mode="relative", max_granularity=2, seed=3,
                        cluster_method=[m for m in mpruner.prune.cluster.METHODS if m != "anchor"][0])
    assert p._options() == {**base, "view": "tokens", "tolerance_mode": "relative", "max_granularity": 2, "seed": 3,
                            "cluster_method": p.cluster_method, "higher_is_better": False,
                            "select": "contiguous", "n": 1}
