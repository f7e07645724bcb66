"""One training process: models, optimisers, the step, checkpoints and sample grids (no Ray, no MLflow here).

Distributed training runs one ``Trainer`` per worker with ``wrap`` set to a DDP wrapper: worker r of W takes
positions ``step·B + r·B/W … + B/W − 1`` of the global sample sequence (``faceset.training_batch``), so W workers see
exactly the batch one process would, and DDP's gradient average over equal shares is the global-batch gradient.
"""
from __future__ import annotations

import copy
import io
import re
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from dfdcore.api import load_weights
from dfdcore.arch.checkpoint import save_checkpoint
from dfdcore.arch.discriminator import MultiScaleSNDiscriminator
from dfdcore.arch.generator import DFDNet
from dfdcore.arch.vgg_weights import extractor_checksum, load_vgg
from dfdcore.data.degrade import DegradationConfig
from dfdcore.data.faceset import FaceSet, training_batch, training_sample
from dfdcore.dictionary.format import ComponentDictionary
from dfdcore.evaluation.metrics import IdentityEncoder
from dfdcore.evaluation.pairs import aggregate, degraded_pairs, metric_rows, restore_pairs
from dfdcore.io.pixels import images_to_tensor, tensor_to_images
from dfdcore.io.storage import exists, filesystem_for, join_uri, read_bytes, write_bytes_atomic
from dfdcore.training.config import TrainConfig
from dfdcore.training.identity import IdentityLoss
from dfdcore.training.losses import PerceptualLoss, hinge_d_loss, hinge_g_loss, l1_loss, log_mse_loss, pixel_loss
from dfdcore.viz import side_by_side

STATE_FORMAT = "dfd-train-state"
# A checkpoint is the folder checkpoints/step_NNNNNNNN/ holding STATE_NAME (one folder per checkpoint: the unit Ray
# Train keeps or prunes, tasks.checkpoints); step_NNNNNNNN.pt files are the layout of runs made before.
_CHECKPOINT = re.compile(r"step_(\d{8})(\.pt)?$")
CHECKPOINTS = "checkpoints"
STATE_NAME = "train_state.pt"
SAMPLE_SEED_OFFSET = 7919  # sample grids use their own degradations, never a training sample's
PIXEL_LOSSES = {"mse": pixel_loss, "l1": l1_loss, "psnr": log_mse_loss}
VALIDATION_SEED_OFFSET = 104729  # nor the test set's (dfd evaluate's seed 1234)


def build_generator(cfg: TrainConfig, device: torch.device) -> DFDNet:
    """The generator to train: from ``init_weights`` or seeded random layers with the configured VGG19, dictionary
    attached on ``device``, VGG frozen, spectral norm power-iterating as in training."""
    dictionary = ComponentDictionary.load(cfg.dictionary)
    if cfg.init_weights:
        generator = load_weights(cfg.init_weights, cfg.face_size)
        random_vgg = False
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            generator = DFDNet(cfg.generator, residual=cfg.residual)
        if cfg.residual:
            generator.zero_output_layer()
        vgg, _, random_vgg = load_vgg(None if cfg.random_vgg else cfg.vgg_weights, width=cfg.ngf,
                                      random_seed=cfg.seed if cfg.random_vgg else None)
        generator.VggExtract.load_state_dict(vgg.state_dict())
    generator.to(device).attach_dictionary(dictionary)
    generator.requires_grad_(True)
    generator.VggExtract.requires_grad_(cfg.train_vgg)
    generator.VggExtract.RGB_mean.requires_grad_(False)  # the input normalisation stays what it is
    generator.VggExtract.RGB_std.requires_grad_(False)
    generator.set_spectral_norm_power_iteration(True)
    generator.provenance = {"random_weights": False, "trained_by": "dfd", "random_vgg": random_vgg,
                            "extractor_checksum": extractor_checksum(generator.VggExtract),
                            "init_weights": cfg.init_weights, "dictionary": dictionary.metadata}
    return generator.train()


def ema_copy(generator: DFDNet) -> DFDNet:
    """A frozen copy of ``generator`` sharing its dictionary bank (never duplicated: up to 3 GiB), in eval mode."""
    copy = DFDNet(generator.config, fidelity=generator.fidelity, residual=generator.residual,
                  residual_tanh=generator.residual_tanh)
    copy.load_state_dict(generator.state_dict())
    copy.to(generator.VggExtract.RGB_mean.device).requires_grad_(False).eval()
    copy.bank, copy.provenance = generator.bank, generator.provenance
    return copy


@torch.no_grad()
def update_ema(average: nn.Module, live: nn.Module, decay: float) -> None:
    """average ← decay · average + (1 − decay) · live for parameters; buffers (SN vectors) copied as they are."""
    for mean, value in zip(average.parameters(), live.parameters()):
        mean.lerp_(value, 1.0 - decay)
    for mean, value in zip(average.buffers(), live.buffers()):
        mean.copy_(value)


def _grad_norm(parameters: list[nn.Parameter]) -> float:
    norms = [p.grad.detach().float().norm() for p in parameters if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


def _global_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average logged numbers over workers so that every worker reports the global-batch values."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    packed = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(packed)
    return dict(zip(values, (packed / dist.get_world_size()).tolist()))


class Trainer:
    """Generator + multi-scale SN discriminator with their Adam optimisers and (on CUDA) a gradient scaler.

    ``wrap`` turns a module into its distributed version (DDP); the unwrapped modules stay reachable for
    checkpoints, the discriminator's use inside the generator step, and sampling.
    """

    def __init__(self, cfg: TrainConfig, device: torch.device | str = "cpu", *, rank: int = 0,
                 wrap: Callable[[nn.Module], nn.Module] = lambda m: m) -> None:
        self.cfg, self.device, self.rank = cfg, torch.device(device), rank
        self.faces = FaceSet(cfg.faceset, "train")
        self.held_out = FaceSet(cfg.faceset, "test")
        if len(self.faces) == 0:
            raise ValueError(f"{cfg.faceset}: no training faces")
        if self.faces.face_size != cfg.face_size:
            raise ValueError(f"{cfg.faceset} holds {self.faces.face_size}-px faces, the model wants {cfg.face_size}")
        self.degradation = DegradationConfig.preset(cfg.degradation)
        self.generator = build_generator(cfg, self.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + 1)
            self.discriminator = MultiScaleSNDiscriminator(cfg.face_size, cfg.d_dim, cfg.d_scales).to(self.device)
        # The loss sees the starting VGG, frozen: a trained encoder must not move the yardstick it is measured by.
        self.perceptual = PerceptualLoss(copy.deepcopy(self.generator.VggExtract) if cfg.train_vgg
                                         else self.generator.VggExtract)
        self.identity = IdentityLoss(cfg.face_size).to(self.device) if cfg.identity_weight else None
        self.g_params = [p for p in self.generator.parameters() if p.requires_grad]
        self.d_params = list(self.discriminator.parameters())
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g = torch.optim.Adam(self.g_params, lr=cfg.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.d_params, lr=cfg.lr, betas=betas)
        self.amp = cfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)
        self.g_train = wrap(self.generator)
        self.d_train = wrap(self.discriminator)
        self.ema = ema_copy(self.generator) if cfg.ema_decay else None
        self.step = 0
        self._validation: tuple[list[dict], list[dict]] | None = None

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.float16) if self.amp else nullcontext()

    def batch_positions(self, step: int, world: int) -> list[int]:
        local = self.cfg.batch_size // world
        start = step * self.cfg.batch_size + self.rank * local
        return list(range(start, start + local))

    def train_step(self, world: int = 1) -> dict[str, float]:
        """One generator update then one discriminator update on the batch of ``self.step`` → logged numbers."""
        cfg, w = self.cfg, self.cfg.loss_weights
        for group in (*self.opt_g.param_groups, *self.opt_d.param_groups):
            group["lr"] = cfg.lr * cfg.lr_factor(self.step)
        batch = training_batch(self.faces, self.batch_positions(self.step, world), cfg.seed, self.degradation,
                               cfg.flip_probability, cfg.augment)
        lq, hq, boxes = batch.lq.to(self.device), batch.hq.to(self.device), batch.boxes

        adversarial_on = cfg.adversarial_at(self.step)
        # Generator: D's weights frozen and used unwrapped, so the adversarial term's gradient reaches G only.
        self.discriminator.requires_grad_(False)
        with self._autocast():
            restored = self.g_train(lq, boxes)
            pixel = PIXEL_LOSSES[cfg.pixel_criterion](restored.float(), hq)
            if w.perceptual or w.style:
                content, style = self.perceptual(restored.float(), hq)
            else:  # a pixel-only recipe need not run the loss network
                content = style = torch.zeros((), device=self.device)
            adversarial = hinge_g_loss(self.discriminator(restored)) if adversarial_on else \
                torch.zeros((), device=self.device)
            identity_on = self.identity is not None and cfg.identity_at(self.step)
            identity = self.identity(restored, hq) if identity_on else torch.zeros((), device=self.device)
            loss_g = (w.pixel * pixel + w.perceptual * content + w.style * style + w.adversarial * adversarial
                      + w.identity * identity)
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(loss_g).backward()
        self.scaler.unscale_(self.opt_g)
        grad_norm_g = _grad_norm(self.g_params)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.g_params, cfg.grad_clip)
        self.scaler.step(self.opt_g)
        if self.ema is not None:  # the decay ramps up so the average does not drag the random start along
            update_ema(self.ema, self.generator, min(cfg.ema_decay, (1 + self.step) / (10 + self.step)))

        logged_d = {"loss_d": 0.0, "d_real": 0.0, "d_fake": 0.0}
        grad_norm_d = 0.0
        if adversarial_on:  # the discriminator trains only while its term is on (warm-up: pixel/perceptual only)
            self.discriminator.requires_grad_(True)
            with self._autocast():
                real_scores = self.d_train(hq)
                fake_scores = self.d_train(restored.detach())
                loss_d = hinge_d_loss(real_scores, fake_scores)
            self.opt_d.zero_grad(set_to_none=True)
            self.scaler.scale(loss_d).backward()
            self.scaler.unscale_(self.opt_d)
            grad_norm_d = _grad_norm(self.d_params)
            self.scaler.step(self.opt_d)
            logged_d = {"loss_d": loss_d.item(),
                        "d_real": float(torch.cat([s.detach().float().flatten() for s in real_scores]).mean()),
                        "d_fake": float(torch.cat([s.detach().float().flatten() for s in fake_scores]).mean())}
        self.scaler.update()

        self.step += 1
        logged = {"loss_g": loss_g.item(), "pixel": pixel.item(), "perceptual": content.item(),
                  "style": style.item(), "adversarial": adversarial.item(), "identity": identity.item(), **logged_d}
        logged = _global_mean(logged, self.device)
        # Gradient norms are taken after DDP's all-reduce: already global.
        return logged | {"grad_norm_g": grad_norm_g, "grad_norm_d": grad_norm_d, "lr": cfg.lr * cfg.lr_factor(
            self.step - 1)}

    # ------------------------------------------------------------------------------------------- checkpoints
    def state(self) -> dict:
        return {"format": STATE_FORMAT, "step": self.step, "config": self.cfg.to_dict(),
                "generator": self.generator.state_dict(), "discriminator": self.discriminator.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "scaler": self.scaler.state_dict()} | ({"ema": self.ema.state_dict()} if self.ema else {})

    def save(self) -> str:
        """Write the full training state (models, optimisers, scaler, step) atomically → its URI."""
        buffer = io.BytesIO()
        torch.save(self.state(), buffer)
        uri = checkpoint_uri(self.cfg.out, self.step)
        write_bytes_atomic(uri, buffer.getvalue())
        return uri

    def load(self, uri: str) -> None:
        state = torch.load(io.BytesIO(read_bytes(uri)), map_location=self.device, weights_only=True)
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"{uri}: not a dfd training checkpoint")
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state.get("ema", state["generator"]))
        self.step = int(state["step"])

    @property
    def model(self) -> DFDNet:
        """The generator that is validated, sampled and exported: the EMA copy when there is one."""
        return self.ema if self.ema is not None else self.generator

    def export_generator(self, path: str | Path, validation: dict | None = None) -> Path:
        """The trained generator (EMA copy when kept) as a dfd ``.safetensors`` (or official-layout ``.pth``) that
        ``load_generator`` reads with the run's dictionary; ``validation`` (its figures beside bicubic's) goes into
        the metadata, so that whoever loads it can tell whether it beat bicubic."""
        provenance = dict(self.generator.provenance) | {"step": self.step, "train_config": self.cfg.to_dict(),
                                                         "ema": self.ema is not None}
        if validation:
            provenance["validation"] = validation
        return save_checkpoint(self.model, path, metadata=provenance)

    # ------------------------------------------------------------------------------------------- samples
    def fixed_pairs(self, count: int) -> list[tuple[np.ndarray, np.ndarray, torch.Tensor]]:
        """``count`` fixed (lq, hq, boxes) pairs of held-out faces (training faces when none are held out)."""
        faces = self.held_out if len(self.held_out) else self.faces
        seed = self.cfg.seed + SAMPLE_SEED_OFFSET
        return [training_sample(faces, i, seed, self.degradation, flip_probability=0.0)
                for i in range(min(count, len(faces)))]

    @torch.no_grad()
    def restore_eval(self, lq: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """The generator (EMA copy when kept) in inference mode (SN vectors left as they are, so sampling never
        changes training)."""
        model = self.model
        if model is self.generator:
            model.eval().set_spectral_norm_power_iteration(False)
        try:
            return model(lq.to(self.device), boxes).float().clamp(-1, 1)
        finally:
            if model is self.generator:
                model.train().set_spectral_norm_power_iteration(True)

    def validation_pairs(self) -> tuple[list[dict], list[dict]]:
        """The fixed validation pairs of the held-out faces (training faces when none are held out) and the bicubic
        baseline's metric rows on them — made once per trainer."""
        if self._validation is None:
            faces = self.held_out if len(self.held_out) else self.faces
            pairs = degraded_pairs(faces, self.cfg.val_pairs, self.cfg.seed + VALIDATION_SEED_OFFSET, self.degradation)
            self._encoder = IdentityEncoder()
            self._validation = pairs, metric_rows([p["lq"] for p in pairs], pairs, encoder=self._encoder)
        return self._validation

    def validate(self) -> dict[str, float]:
        """Mean PSNR, SSIM, identity and landmark distance … of the model on the validation pairs → ``val_*``, and
        the same of bicubic (the LQ itself) → ``bicubic_*``, for curves that show where the model stands."""
        pairs, bicubic = self.validation_pairs()
        rows = metric_rows(list(restore_pairs(self.restore_eval, pairs)), pairs, encoder=self._encoder)
        return ({f"val_{k}": v for k, v in aggregate(rows).items()} |
                {f"bicubic_{k}": v for k, v in aggregate(bicubic).items()})

    @torch.no_grad()
    def validation_loss(self, count: int = 4) -> dict[str, float]:
        """Pixel and perceptual loss of the fixed pairs: comparable from step to step, unlike the batch losses."""
        pairs = self.fixed_pairs(count)
        hq = images_to_tensor([p[1] for p in pairs]).to(self.device)
        restored = self.restore_eval(images_to_tensor([p[0] for p in pairs]), torch.stack([p[2] for p in pairs]))
        content, _ = self.perceptual(restored, hq)
        return {"val_pixel": pixel_loss(restored, hq).item(), "val_perceptual": content.item()}

    def sample_grid(self) -> np.ndarray:
        """Rows of LQ | restored | HQ for the fixed pairs."""
        pairs = self.fixed_pairs(self.cfg.samples)
        restored = self.restore_eval(images_to_tensor([p[0] for p in pairs]), torch.stack([p[2] for p in pairs]))
        images = tensor_to_images(restored)
        rows = [side_by_side([p[0], images[i], p[1]], ["LQ", f"restored (step {self.step})", "HQ"])
                for i, p in enumerate(pairs)]
        return np.concatenate(rows, axis=0)


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint at ``step`` under ``out/checkpoints``."""
    return f"step_{step:08d}"


def checkpoint_uri(out: str, step: int) -> str:
    """The training state file of the checkpoint at ``step`` of the training folder ``out``."""
    return join_uri(out, f"{CHECKPOINTS}/{checkpoint_name(step)}/{STATE_NAME}")


def checkpoint_step(uri: str) -> int:
    """The step of a checkpoint URI (``…/step_NNNNNNNN/train_state.pt`` or a former ``…/step_NNNNNNNN.pt``)."""
    match = re.search(r"step_(\d{8})(?:\.pt$|/)", uri)
    if match is None:
        raise ValueError(f"{uri}: expected a checkpoint …/step_NNNNNNNN/{STATE_NAME} (or …/step_NNNNNNNN.pt)")
    return int(match[1])


def checkpoint_steps(out: str) -> dict[int, str]:
    """{step: state file URI} of every checkpoint under ``out/checkpoints`` (complete ones: a folder whose state file
    is not there yet, or any more, is left out)."""
    folder = join_uri(out, CHECKPOINTS)
    if not exists(folder):
        return {}
    fs, path = filesystem_for(folder)
    found = {}
    for name in fs.ls(path, detail=False):
        match = _CHECKPOINT.search(name.rstrip("/"))
        if match:
            leaf = Path(name.rstrip("/")).name
            found[int(match[1])] = join_uri(folder, leaf if match[2] else f"{leaf}/{STATE_NAME}")
    return {step: uri for step, uri in sorted(found.items()) if exists(uri)}


def latest_checkpoint(out: str) -> str | None:
    """URI of the state file of the checkpoint with the highest step under ``out/checkpoints``, or None."""
    steps = checkpoint_steps(out)
    return steps[max(steps)] if steps else None
