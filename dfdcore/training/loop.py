"""One training process: models, optimisers, the step, checkpoints and sample grids (no Ray, no MLflow here).

Distributed training runs one ``Trainer`` per worker with ``wrap`` set to a DDP wrapper: worker r of W takes
positions ``step·B + r·B/W … + B/W − 1`` of the global sample sequence (``faceset.training_batch``), so W workers see
exactly the batch one process would, and DDP's gradient average over equal shares is the global-batch gradient.
"""
from __future__ import annotations

import io
import re
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..api import load_weights
from ..arch.checkpoint import save_checkpoint
from ..arch.discriminator import MultiScaleSNDiscriminator
from ..arch.generator import DFDNet
from ..degrade import DegradationConfig
from ..dictionary import ComponentDictionary
from ..faceset import FaceSet, to_unit_range, training_batch, training_sample
from ..features import extractor_checksum, load_vgg
from ..io.storage import exists, filesystem_for, join_uri, read_bytes, write_bytes_atomic
from ..losses import PerceptualLoss, hinge_d_loss, hinge_g_loss, pixel_loss
from ..viz import side_by_side
from .config import TrainConfig

STATE_FORMAT = "dfd-train-state"
_CHECKPOINT = re.compile(r"step_(\d{8})\.pt$")
SAMPLE_SEED_OFFSET = 7919  # sample grids use their own degradations, never a training sample's


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
            generator = DFDNet(cfg.generator)
        vgg, _, random_vgg = load_vgg(None if cfg.random_vgg else cfg.vgg_weights, width=cfg.ngf,
                                      random_seed=cfg.seed if cfg.random_vgg else None)
        generator.VggExtract.load_state_dict(vgg.state_dict())
    generator.to(device).attach_dictionary(dictionary)
    generator.requires_grad_(True)
    generator.VggExtract.requires_grad_(False)
    generator.set_spectral_norm_power_iteration(True)
    generator.provenance = {"random_weights": False, "trained_by": "dfd", "random_vgg": random_vgg,
                            "vgg_checksum": extractor_checksum(generator.VggExtract),
                            "init_weights": cfg.init_weights, "dictionary": dictionary.metadata}
    return generator.train()


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
        self.perceptual = PerceptualLoss(self.generator.VggExtract)
        self.g_params = [p for p in self.generator.parameters() if p.requires_grad]
        self.d_params = list(self.discriminator.parameters())
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g = torch.optim.Adam(self.g_params, lr=cfg.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.d_params, lr=cfg.lr, betas=betas)
        self.amp = cfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)
        self.g_train = wrap(self.generator)
        self.d_train = wrap(self.discriminator)
        self.step = 0

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
        batch = training_batch(self.faces, self.batch_positions(self.step, world), cfg.seed, self.degradation)
        lq, hq, boxes = batch.lq.to(self.device), batch.hq.to(self.device), batch.boxes

        # Generator: D's weights frozen and used unwrapped, so the adversarial term's gradient reaches G only.
        self.discriminator.requires_grad_(False)
        with self._autocast():
            restored = self.g_train(lq, boxes)
            pixel = pixel_loss(restored.float(), hq)
            content, style = self.perceptual(restored.float(), hq)
            adversarial = hinge_g_loss(self.discriminator(restored))
            loss_g = w.pixel * pixel + w.perceptual * content + w.style * style + w.adversarial * adversarial
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler.scale(loss_g).backward()
        self.scaler.unscale_(self.opt_g)
        grad_norm_g = _grad_norm(self.g_params)
        self.scaler.step(self.opt_g)

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
        self.scaler.update()

        self.step += 1
        logged = {"loss_g": loss_g.item(), "pixel": pixel.item(), "perceptual": content.item(),
                  "style": style.item(), "adversarial": adversarial.item(), "loss_d": loss_d.item(),
                  "d_real": float(torch.cat([s.detach().float().flatten() for s in real_scores]).mean()),
                  "d_fake": float(torch.cat([s.detach().float().flatten() for s in fake_scores]).mean())}
        logged = _global_mean(logged, self.device)
        # Gradient norms are taken after DDP's all-reduce: already global.
        return logged | {"grad_norm_g": grad_norm_g, "grad_norm_d": grad_norm_d, "lr": cfg.lr * cfg.lr_factor(
            self.step - 1)}

    # ------------------------------------------------------------------------------------------- checkpoints
    def state(self) -> dict:
        return {"format": STATE_FORMAT, "step": self.step, "config": self.cfg.to_dict(),
                "generator": self.generator.state_dict(), "discriminator": self.discriminator.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "scaler": self.scaler.state_dict()}

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
        self.step = int(state["step"])

    def export_generator(self, path: str | Path) -> Path:
        """The trained generator as a dfd ``.safetensors`` (or official-layout ``.pth``) that ``load_generator``
        reads with the run's dictionary."""
        provenance = dict(self.generator.provenance) | {"step": self.step, "train_config": self.cfg.to_dict()}
        return save_checkpoint(self.generator, path, metadata=provenance)

    # ------------------------------------------------------------------------------------------- samples
    def fixed_pairs(self, count: int) -> list[tuple[np.ndarray, np.ndarray, torch.Tensor]]:
        """``count`` fixed (lq, hq, boxes) pairs of held-out faces (training faces when none are held out)."""
        faces = self.held_out if len(self.held_out) else self.faces
        seed = self.cfg.seed + SAMPLE_SEED_OFFSET
        return [training_sample(faces, i, seed, self.degradation, flip_probability=0.0)
                for i in range(min(count, len(faces)))]

    @torch.no_grad()
    def restore_eval(self, lq: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """The generator in inference mode (SN vectors left as they are, so sampling never changes training)."""
        self.generator.eval().set_spectral_norm_power_iteration(False)
        try:
            return self.generator(lq.to(self.device), boxes).float().clamp(-1, 1)
        finally:
            self.generator.train().set_spectral_norm_power_iteration(True)

    @torch.no_grad()
    def validation_loss(self, count: int = 4) -> dict[str, float]:
        """Pixel and perceptual loss of the fixed pairs: comparable from step to step, unlike the batch losses."""
        pairs = self.fixed_pairs(count)
        hq = to_unit_range([p[1] for p in pairs]).to(self.device)
        restored = self.restore_eval(to_unit_range([p[0] for p in pairs]), torch.stack([p[2] for p in pairs]))
        content, _ = self.perceptual(restored, hq)
        return {"val_pixel": pixel_loss(restored, hq).item(), "val_perceptual": content.item()}

    def sample_grid(self) -> np.ndarray:
        """Rows of LQ | restored | HQ for the fixed pairs."""
        pairs = self.fixed_pairs(self.cfg.samples)
        restored = self.restore_eval(to_unit_range([p[0] for p in pairs]), torch.stack([p[2] for p in pairs]))
        images = ((restored + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        rows = [side_by_side([p[0], images[i], p[1]], ["LQ", f"restored (step {self.step})", "HQ"])
                for i, p in enumerate(pairs)]
        return np.concatenate(rows, axis=0)


def checkpoint_uri(out: str, step: int) -> str:
    return join_uri(out, f"checkpoints/step_{step:08d}.pt")


def latest_checkpoint(out: str) -> str | None:
    """URI of the checkpoint with the highest step under ``out/checkpoints``, or None."""
    folder = join_uri(out, "checkpoints")
    if not exists(folder):
        return None
    fs, path = filesystem_for(folder)
    steps = sorted((int(m[1]), name) for name in fs.ls(path, detail=False) if (m := _CHECKPOINT.search(name)))
    return join_uri(folder, Path(steps[-1][1]).name) if steps else None
