"""Run by torchrun in tests/test_distributed.py: pretrain with the given flat settings, then
save this rank's final online parameters for the test to compare.

    python -m torch.distributed.run --nproc-per-node 2 tests/ddp_worker.py OUT SETTINGS [RESUME]
"""

import json
import os
import sys
from pathlib import Path

import torch

from byol.pretrain import prepare_run

out, settings = Path(sys.argv[1]), json.loads(sys.argv[2])
resume = sys.argv[3] if len(sys.argv) > 3 else None
trainer, _ = prepare_run(None, settings, out, resume)
trainer.fit()
params = torch.cat([p.detach().flatten() for p in trainer.model.trainable_parameters()])
torch.save({"params": params, "target": trainer.target_params.data.clone(),
            "world_size": trainer.processes.world_size},
           out / f"params-rank{os.environ.get('RANK', '0')}.pt")
