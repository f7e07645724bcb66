"""What a training run is: one frozen configuration, stored with every checkpoint and logged as parameters."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from dfdcore.config import GeneratorConfig
from dfdcore.data.degrade import DegradationConfig

LR_SCHEDULES = ("linear", "cosine")
PIXEL_CRITERIA = ("mse", "l1", "psnr")
# Validation figures a run can keep its best generator by (direction: dfdcore.evaluation.pairs.HIGHER_IS_BETTER).
VALIDATION_METRICS = ("psnr", "ssim", "psnr_y", "ssim_y", "identity_distance", "landmark_distance")


@dataclass(frozen=True)
class LossWeights:
    """λ of each generator loss term. These defaults are dfd's own choice (the official weights were never
    published, reference §5.3): the pixel and perceptual terms carry the reconstruction, a small adversarial term
    adds texture; the style term is off unless asked for."""

    pixel: float = 1.0
    perceptual: float = 1.0
    style: float = 0.0
    adversarial: float = 0.1
    identity: float = 0.0  # dlib descriptor distance (dfdcore.training.identity); off unless asked for


@dataclass(frozen=True)
class TrainConfig:
    """A training run.

    Data: ``faceset`` (a faceset.parquet made by ``dfd train``/``flows.train`` from photos or a dictionary build).
    Model: the generator of ``face_size``/``ngf`` with ``dictionary`` attached; ``init_weights`` fine-tunes an
    existing generator (official, BasicSR or dfd checkpoint). VGG19: ``vgg_weights`` (ImageNet, torchvision's
    ``vgg19-dcbb9e9d.pth``) unless ``init_weights`` brings its own, or ``random_vgg`` (tests and demos, labelled).
    Optimisation (reference §5.2 defaults): Adam lr 2e-4, β = (0.5, 0.999), constant for ``constant_fraction`` of
    the steps then a ``lr_schedule`` decay to 0 (linear, or cosine); ``batch_size`` is the global batch, split
    evenly over ``workers``.

    Recipe (dfd's additions, measured in bench/RESULTS.md): ``residual`` makes a new generator predict a correction
    added to its input, starting as the identity (its last conv zeroed) — so training starts at the bicubic baseline
    instead of at noise; ``adversarial_start`` keeps the adversarial term (and the discriminator's updates) off for a
    pixel/perceptual warm-up, and ``identity_start`` likewise the identity term (a pixel-only warm-up, then a
    fine-tuning phase whose start is the pixel-only model to compare with); ``grad_clip`` > 0 caps the generator's gradient norm (a trained random VGG at a high
    learning rate can otherwise diverge); ``ema_decay`` > 0 keeps an exponential moving average of the generator,
    used for validation, samples and export; ``flip_probability`` mirrors training faces; ``augment`` warps and
    recolours them (``faceset.augment_face``; 1 = rotation ±15°, scale ×0.8–1.25, shift ±8 %: small face sets);
    ``train_vgg`` trains the generator's encoder too (sensible for a random VGG, whose features carry nothing worth
    keeping; the perceptual loss keeps a frozen copy of the starting VGG).

    Validation: every ``val_every`` steps (and at the last) ``val_pairs`` fixed degraded copies of the held-out faces
    are restored and scored (PSNR, SSIM, identity distance …) beside the bicubic baseline; the generator with the best
    ``best_metric`` is kept as ``out/best/``.
    """

    faceset: str
    dictionary: str
    out: str
    face_size: int = 512
    ngf: int = 64
    init_weights: str | None = None
    vgg_weights: str | None = None
    random_vgg: bool = False
    degradation: str = "reference"
    steps: int = 1000
    batch_size: int = 2
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    constant_fraction: float = 0.01
    lr_schedule: str = "linear"
    pixel_weight: float = LossWeights.pixel
    pixel_criterion: str = "mse"
    perceptual_weight: float = LossWeights.perceptual
    style_weight: float = LossWeights.style
    adversarial_weight: float = LossWeights.adversarial
    identity_weight: float = LossWeights.identity
    residual: bool = False
    train_vgg: bool = False
    adversarial_start: int = 0
    identity_start: int = 0
    ema_decay: float = 0.0
    grad_clip: float = 0.0
    flip_probability: float = 0.5
    augment: float = 0.0
    val_every: int = 500
    val_pairs: int = 16
    best_metric: str = "psnr"
    d_dim: int = 64
    d_scales: int = 3
    checkpoint_every: int = 500
    sample_every: int = 100
    log_every: int = 10
    samples: int = 4
    seed: int = 0
    workers: int = 1
    use_gpu: bool = False
    amp: bool = True

    def __post_init__(self) -> None:
        GeneratorConfig(self.face_size, self.ngf)  # validates the sizes
        DegradationConfig.preset(self.degradation)
        if self.batch_size < 1 or self.workers < 1 or self.batch_size % self.workers:
            raise ValueError(f"batch_size ({self.batch_size}) must be a positive multiple of workers "
                             f"({self.workers}): each worker takes an equal share of the global batch")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.best_metric not in VALIDATION_METRICS:
            raise ValueError(f"best_metric must be one of {VALIDATION_METRICS}, got {self.best_metric!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) (0 = no EMA copy), got {self.ema_decay}")
        if self.pixel_criterion not in PIXEL_CRITERIA:
            raise ValueError(f"pixel_criterion must be one of {PIXEL_CRITERIA}, got {self.pixel_criterion!r}")
        if not 0 <= self.augment <= 3:
            raise ValueError(f"augment must be in [0, 3] (0 = off), got {self.augment}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0 (0 = off), got {self.grad_clip}")
        if self.val_every < 0 or self.val_pairs < 1 or self.adversarial_start < 0 or self.identity_start < 0:
            raise ValueError(f"val_every, adversarial_start and identity_start must be >= 0 and val_pairs >= 1, got "
                             f"{self.val_every}, {self.adversarial_start}, {self.identity_start}, {self.val_pairs}")
        if self.residual and self.init_weights:
            raise ValueError("residual applies to a new generator; init_weights brings its own output mode")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not (self.vgg_weights or self.random_vgg or self.init_weights):
            raise ValueError("the generator's VGG19 needs ImageNet weights: pass vgg_weights (torchvision's "
                             "vgg19-dcbb9e9d.pth), init_weights (a generator checkpoint), or random_vgg=True for a "
                             "test or demo run (its outputs are labelled random-VGG)")

    @property
    def generator(self) -> GeneratorConfig:
        return GeneratorConfig(self.face_size, self.ngf)

    @property
    def loss_weights(self) -> LossWeights:
        return LossWeights(self.pixel_weight, self.perceptual_weight, self.style_weight, self.adversarial_weight,
                           self.identity_weight)

    @property
    def local_batch(self) -> int:
        return self.batch_size // self.workers

    def lr_factor(self, step: int) -> float:
        """Learning-rate multiplier at ``step`` (0-based): 1 during the constant phase, then linear to 0."""
        constant = int(self.constant_fraction * self.steps)
        if step < constant:
            return 1.0
        progress = min(1.0, (step - constant) / max(1, self.steps - constant))
        return 0.5 * (1 + math.cos(math.pi * progress)) if self.lr_schedule == "cosine" else 1.0 - progress

    def adversarial_at(self, step: int) -> bool:
        """Whether the adversarial term and the discriminator train at ``step`` (0-based)."""
        return self.adversarial_weight > 0 and step >= self.adversarial_start

    def identity_at(self, step: int) -> bool:
        """Whether the identity term is part of the generator's loss at ``step`` (0-based)."""
        return self.identity_weight > 0 and step >= self.identity_start

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
