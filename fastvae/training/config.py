"""`TrainConfig`: the settings of a training run, each declared once with its check and resume rule.

``fastvae train`` derives its flags from these fields (see `fastvae.training.options`); a field
marked ``resume=True`` may change when a run is resumed, the others are fixed by the checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..vae.model import LOSS_IMPLS
from ..vae.objectives import GRADIENTS, OBJECTIVES, make_objective
from .options import check_fields, choice, device, flag, integer, option, real, seed_number, split_resume

__all__ = ["TrainConfig", "LOSS_IMPLS", "WARMUP_UNITS", "BINARIZE_MODES", "RESUME_OVERRIDABLE", "LR_SCHEDULES", "OUTPUT_BIAS_INITS"]

WARMUP_UNITS = ("epochs", "steps")
#: Learning-rate schedules: from lr to lr_final over the run (its steps, or its time budget).
LR_SCHEDULES = ("constant", "cosine", "exponential")
BINARIZE_MODES = (None, "static", "dynamic")
#: Decoder output bias at the start of a fresh run (`fastvae.vae.init_output_bias`).
OUTPUT_BIAS_INITS = ("default", "marginal")


def _minutes(name: str, value: object) -> Optional[float]:
    """None, or a positive number of minutes."""
    return None if value is None else real(0.0, strict_low=True)(name, value)


@dataclass
class TrainConfig:
    """Settings of a training run (saved in checkpoints); each field's help says what it does.

    Fields marked "may change on resume" can be overridden by `Trainer.from_checkpoint`; the
    others define the run being continued.
    """

    epochs: int = option(10, "passes over the training set", integer(1), resume=True,
                         cli_default="auto", default_help="50 for the digits, 10 otherwise")
    batch_size: int = option(128, "global minibatch size, split evenly over torchrun ranks", integer(1))
    lr: float = option(1e-3, "Adam learning rate", real(0.0, strict_low=True))
    beta: float = option(1.0, "final weight of the KL term (beta-VAE)", real(0.0))
    warmup: int = option(0, "KL warm-up length: beta ramps linearly from 0 over this many "
                            "warmup units (0: no warm-up)", integer(0))
    warmup_unit: str = option("epochs", "unit of the warm-up", choice(*WARMUP_UNITS), choices=WARMUP_UNITS)
    output_bias: str = option("default", "decoder output bias at the start of a fresh run: 'marginal' is the training "
                                         "data's marginal (logits for a Bernoulli likelihood), which skips the early "
                                         "plateau that collapses hierarchical VAEs; 'default' keeps the initialisation",
                              choice(*OUTPUT_BIAS_INITS), choices=OUTPUT_BIAS_INITS)
    free_bits: float = option(0.0, "KL floor per latent dimension, in nats (0 keeps the fully fused loss)",
                              real(0.0))
    seed: int = option(0, "seed for data order, binarisation and sampling noise (and, on the command "
                          "line, the weights)", seed_number)
    device: str = option("auto", "'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'; under "
                                 "torchrun each rank uses cuda:LOCAL_RANK", device, resume=True)
    amp: bool = option(False, "bf16 autocast for the networks (CUDA only)", flag(), resume=True)
    compile: bool = option(False, "torch.compile the encoder and decoder in place (state_dict keys "
                                  "do not change; the first steps take longer)", flag(), resume=True)
    loss_impl: str = option("fused", "fused kernels (fastvae.functional) or plain PyTorch "
                                     "(fastvae.reference)", choice(*LOSS_IMPLS), choices=LOSS_IMPLS)
    objective: str = option("elbo", "training objective: the ELBO or the importance-weighted bound (IWAE) "
                                    "of --num-samples samples", choice(*OBJECTIVES), choices=OBJECTIVES)
    num_samples: int = option(1, "posterior samples K per example in the training objective", integer(1))
    gradient: str = option("reparam", "gradient estimator: reparam; stl (sticking the landing, ELBO); dreg "
                                      "(doubly reparameterised, IWAE)", choice(*GRADIENTS), choices=GRADIENTS)
    ema_decay: float = option(0.0, "evaluate, sample and save alongside the weights an exponential moving average "
                                   "of them with this decay per step (e.g. 0.999; 0: off)", real(0.0))
    binarize: Optional[str] = option(
        None, "binarise grey levels: 'dynamic' draws x ~ Bernoulli(grey level) afresh for every "
              "training batch (one fixed draw for the test set), 'static' thresholds at 0.5",
        choice(*BINARIZE_MODES), cli_default="auto", choices=("auto", "none", "static", "dynamic"),
        default_help="auto: dynamic for a Bernoulli likelihood, none for a Gaussian")
    lr_schedule: str = option("constant", "learning rate from --lr to --lr-final over the run (its epochs and "
                                          "--max-steps, or the --time-budget when that ends it first)",
                              choice(*LR_SCHEDULES), choices=LR_SCHEDULES)
    lr_final: float = option(1e-4, "last learning rate of a cosine or exponential schedule",
                             real(0.0, strict_low=True))
    time_budget: Optional[float] = option(None, "stop after this many minutes of training (checked after "
                                                "every step; ends like --max-steps)", _minutes, resume=True,
                                          default_help="none")
    max_steps: Optional[int] = option(None, "stop after this many optimizer steps in total",
                                      integer(1, optional=True), resume=True, default_help="none: run all epochs")
    eval_batch_size: int = option(1000, "examples per evaluation chunk", integer(1), resume=True)
    eval_samples: int = option(0, "importance samples K for the test log-likelihood after training "
                                  "(0: skip)", integer(0), resume=True, cli_default=100)
    ll_every: int = option(0, "every this many epochs, also the test log-likelihood with --eval-samples "
                              "importance samples in the metrics (0: only after training)", integer(0), resume=True)
    log_every: int = option(0, "also log a metrics line every this many steps (0: once per epoch)",
                            integer(0), resume=True)
    progress: Optional[bool] = option(None, "progress bar with the running ELBO", flag(optional=True),
                                      resume=True, default_help="only when stderr is a terminal")
    checkpoint_every: int = option(1, "epochs between checkpoints (0: only at the end and on Ctrl-C)",
                                   integer(0), resume=True)

    def __post_init__(self) -> None:
        check_fields(self)
        make_objective(self.objective, self.num_samples, self.gradient)  # the pair must be supported
        if not self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be 0 (off) or in (0, 1), got {self.ema_decay!r}")
        if self.free_bits and (self.objective, self.num_samples, self.gradient) != ("elbo", 1, "reparam"):
            raise ValueError("free_bits needs objective='elbo', num_samples=1 and gradient='reparam'")


#: Settings a resumed run may change without breaking the continuation of the saved run.
RESUME_OVERRIDABLE = frozenset(split_resume(TrainConfig)[0])
