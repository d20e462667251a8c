"""``python _train_kill_driver.py MARKER THREADS <vxlp train args…>``: runs ``vxlp train`` (the CLI's ``main``) and,
in its second checkpoint save, after DCP has written the model and optimizer files but before the checkpoint is
complete, creates MARKER and waits to be killed (tests/test_train_scale.py kills it with SIGKILL)."""

import sys
import time

import torch
import torch.distributed.checkpoint as dcp

marker, threads, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
torch.set_num_threads(threads)

from vxlp_model.train import cli, state  # noqa: E402

real_save, real_dcp_save = state.CheckpointManager.save, dcp.save
calls = [0]


def save(self, step, *args, **kwargs):
    calls[0] += 1
    if calls[0] == 2:

        def dcp_save_then_hang(*a, **k):
            real_dcp_save(*a, **k)
            with open(marker, "w") as f:
                f.write(str(step))
            time.sleep(600)

        dcp.save = dcp_save_then_hang
    return real_save(self, step, *args, **kwargs)


state.CheckpointManager.save = save
sys.exit(cli.main(argv))
