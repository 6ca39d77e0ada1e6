"""Run ``crmt fit`` from the command line given, then save this rank's CRMT state to $CRMT_STATE_DIR.

Used by the DDP test: Lightning's ``ddp`` launcher re-runs this script once per rank, so
every rank writes ``rank<r>.pt`` with its a^(m), tau~, phase, step-2 cache size and whole state dict.
"""

import os
from pathlib import Path

import torch

from crmt.cli import main

if __name__ == "__main__":
    cli = main()
    model = cli.model
    state = {
        "integration": model.head.integration.detach().cpu(),
        "tau": model.tau.cpu(),
        "phase": int(model.phase),
        "cached_samples": int(model.score_cache.present.sum()),
        "train_samples": len(cli.datamodule.train_dataloader().dataset),
        "world_size": cli.trainer.world_size,
        "state_dict": {name: value.detach().cpu() for name, value in model.state_dict().items()},
    }
    torch.save(state, Path(os.environ["CRMT_STATE_DIR"]) / f"rank{cli.trainer.global_rank}.pt")
