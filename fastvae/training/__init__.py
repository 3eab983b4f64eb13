"""Training fastvae's VAEs: `Trainer` (one process or DDP under torchrun), `TrainConfig`,
checkpoints, and the evaluation the command line shares.

One job per module: `config` (the settings, declared once in `options`' field metadata),
`rng` (seeding and RNG state), `distributed` (process group), `checkpoint` (format and
validation), `batching` (minibatches, binarisation, data placement), `interrupt` (Ctrl-C),
`evaluation` (chunked test ELBO and log-likelihood), `state` (save and resume), `trainer` (the
loop) and `runlog` (the metrics file). Needs the ``train`` extra (numpy; tqdm for progress bars).
"""
from .checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint, load_model
from .config import LOSS_IMPLS, RESUME_OVERRIDABLE, TrainConfig
from .evaluation import evaluate
from .options import resolve_device
from .rng import seed_everything
from .batching import eval_data
from .trainer import METRICS_NAME, Trainer, fit

__all__ = [
    "TrainConfig",
    "Trainer",
    "fit",
    "evaluate",
    "eval_data",
    "seed_everything",
    "resolve_device",
    "load_checkpoint",
    "load_model",
    "CheckpointError",
    "LOSS_IMPLS",
    "RESUME_OVERRIDABLE",
    "CHECKPOINT_NAME",
    "METRICS_NAME",
]
