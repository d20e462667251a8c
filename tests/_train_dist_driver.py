"""Run under ``torchrun --nproc-per-node 2``: the ReCoT and finetune stages with 2 processes (gloo, FSDP2) on the
data given, one process group for both (see tests/test_train_scale.py::test_two_processes_match_one)."""

import json
import os
import sys

import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _train_data import equivalence_settings  # noqa: E402

from vxlp_model.train import TrainConfig, train  # noqa: E402

data, root = sys.argv[1], sys.argv[2]
dist.init_process_group("gloo")
for stage in ("recot", "finetune"):
    r = train(TrainConfig(stage=stage, data=data, out=os.path.join(root, f"{stage}-2p"), global_batch_size=4, **equivalence_settings(stage)))
    if dist.get_rank() == 0:
        with open(os.path.join(root, f"{stage}-2p.json"), "w") as f:
            json.dump(r.history, f)
dist.destroy_process_group()
