"""What a training run is: one frozen configuration, stored with every checkpoint and logged as parameters."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..config import GeneratorConfig
from ..degrade import DegradationConfig


@dataclass(frozen=True)
class LossWeights:
    """λ of each generator loss term. These defaults are dfd's own choice (the official weights were never
    published, reference §5.3): the pixel and perceptual terms carry the reconstruction, a small adversarial term
    adds texture; the style term is off unless asked for."""

    pixel: float = 1.0
    perceptual: float = 1.0
    style: float = 0.0
    adversarial: float = 0.1


@dataclass(frozen=True)
class TrainConfig:
    """A training run.

    Data: ``faceset`` (a faceset.parquet made by ``dfd train``/``flows.train`` from photos or a dictionary build).
    Model: the generator of ``face_size``/``ngf`` with ``dictionary`` attached; ``init_weights`` fine-tunes an
    existing generator (official, BasicSR or dfd checkpoint). VGG19: ``vgg_weights`` (ImageNet, torchvision's
    ``vgg19-dcbb9e9d.pth``) unless ``init_weights`` brings its own, or ``random_vgg`` (tests and demos, labelled).
    Optimisation (reference §5.2 defaults): Adam lr 2e-4, β = (0.5, 0.999), constant for ``constant_fraction`` of
    the steps then linear decay to 0; ``batch_size`` is the global batch, split evenly over ``workers``.
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
    pixel_weight: float = LossWeights.pixel
    perceptual_weight: float = LossWeights.perceptual
    style_weight: float = LossWeights.style
    adversarial_weight: float = LossWeights.adversarial
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
        return LossWeights(self.pixel_weight, self.perceptual_weight, self.style_weight, self.adversarial_weight)

    @property
    def local_batch(self) -> int:
        return self.batch_size // self.workers

    def lr_factor(self, step: int) -> float:
        """Learning-rate multiplier at ``step`` (0-based): 1 during the constant phase, then linear to 0."""
        constant = int(self.constant_fraction * self.steps)
        if step < constant:
            return 1.0
        return max(0.0, 1.0 - (step - constant) / max(1, self.steps - constant))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
