"""What a pruning run leaves (mpruner/prune/records.py): Iteration and PruneResult."""
import json as _json

import torch.nn as nn

from mpruner.prune.loop import Iteration, PruneResult


# PruneResult.to_dict (the command line's JSON report): every field but the model, the history
# as plain dicts.
def test_prune_result_to_dict():
    it = Iteration(1, 2, 0.9, ["a", "b"], [[1.0, 0.5], [0.5, 1.0]], [[0], [1]], [1], ["b"], 2, 1, 0.8, True)
    r = PruneResult(nn.Linear(1, 1), [it], 0.9, 0.8, 2, 1, 10, 5, 0.01, "absolute", "done", {"total": 1.0})
    d = r.to_dict()
    assert "model" not in d and d["history"] == [{**it.__dict__}] and d["metric_after"] == 0.8
    assert set(d) == {f for f in PruneResult.__dataclass_fields__ if f != "model"}
    _json.dumps(d)  # plain JSON


# PruneResult.summary: the table and the totals, column for column.
def test_prune_result_summary():
    rows = [Iteration(0, 1, 0.98, ["a", "b", "c"], [], [[0, 1, 2]], [1, 2], ["b", "c"], 3, 1, 0.9, True),
            Iteration(1, 2, 0.975, ["a", "c"], [], [[0, 1]], [], [], 2, 2, None, False)]
    r = PruneResult(None, rows, 0.95, 0.9, 3, 2, 1000, 750, 0.01, "absolute", "done",
                    {"analyze": 1.25, "finetune": 0.0, "evaluate": 2.0})
    assert r.summary().splitlines() == [
        "iter  k  thresh removed                     layers    metric  result",
        "   0  1  0.9800 1,2                        3 -> 1      0.9000  accepted",
        "   1  2  0.9750 -                          2 -> 2           -  rolled back",
        "",
        "layers   3 -> 2",
        "params   1,000 -> 750 (-25.0%)",
        "metric   0.9500 -> 0.9000 (tolerance 0.01 absolute: bound 0.9400)",
        "stopped  done",
        "time     analyze 1.2s, finetune 0.0s, evaluate 2.0s",
    ]
    # the share is of the real count, even of one parameter
    one = PruneResult(None, [], 1.0, 1.0, 1, 1, 1, 1, 0.0, "relative", "x", {})
    assert "params   1 -> 1 (-0.0%)" in one.summary()
