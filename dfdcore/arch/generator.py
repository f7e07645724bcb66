"""DFDNet generator, state_dict-compatible with the official ``UNetDictFace`` (see reference §1)."""
from __future__ import annotations

import torch
from torch import nn

from dfdcore.arch.blocks import MSDilateBlock, StyledUpBlock, attention_block, output_head
from dfdcore.arch.spectral_norm import SNConv2d
from dfdcore.arch.tiling import rowwise
from dfdcore.arch.transfer import DictionaryBank, transfer_scale
from dfdcore.arch.vgg import VGGFeatures
from dfdcore.config import OFFICIAL, PART_PREFIXES, PARTS, GeneratorConfig
from dfdcore.dictionary.format import ComponentDictionary


class DFDNet(nn.Module):
    """VGG19 taps → dictionary feature transfer per scale → MSDilate on raw conv5_4 → 4 styled up-blocks → head.

    ``forward(faces, part_boxes)``: faces (B, 3, S, S) in [-1, 1] with S = ``config.face_size``; part_boxes (B, 4, 4)
    integer ``[x1, y1, x2, y2]`` per part (left eye, right eye, nose, mouth) in face pixels → (B, 3, S, S) in [-1, 1].

    The official checkpoint's unused VGG classifier and ``to_rgb0..3`` are not built (see ``IGNORED_KEY_PREFIXES``).
    ``fidelity`` scales the dictionary contribution: 1 = official, 0 = no dictionary (matching is skipped).
    ``residual`` (dfd-trained models only; official and BasicSR weights never set it): the head's output is added
    to the input face, ``clamp(faces + head, −1, 1)``, so a model whose last conv is zero returns its input.
    A residual head is linear (its tanh left out) and the clamp applies only outside training: a saturated tanh or
    clamp passes no gradient, so one bad step that pushed the head far out left the model stuck on a black-and-white
    mask for good (the demo's 8.9 dB collapse). ``residual_tanh`` keeps the tanh, for residual checkpoints written
    before this change (their metadata has no ``residual_head``).
    """

    def __init__(self, config: GeneratorConfig = OFFICIAL, fidelity: float = 1.0, residual: bool = False,
                 residual_tanh: bool = False) -> None:
        super().__init__()
        self.config = config
        self.fidelity = fidelity
        self.residual = residual
        self.residual_tanh = residual and residual_tanh
        self.bank: DictionaryBank | None = None
        self.provenance: dict[str, object] = {}
        # Full-resolution stages are evaluated in this many row bands when gradients are off (1 = whole maps).
        self.row_bands = 4
        self.power_iterate = False
        w = config.ngf
        for part in PARTS:
            for scale, channels in zip(config.scales, config.tap_channels):
                setattr(self, f"{PART_PREFIXES[part]}_{scale}", attention_block(channels))
        self.VggExtract = VGGFeatures(w)
        self.MSDilate = MSDilateBlock(8 * w)
        self.up0 = StyledUpBlock(8 * w, 8 * w)
        self.up1 = StyledUpBlock(8 * w, 4 * w)
        self.up2 = StyledUpBlock(4 * w, 2 * w)
        self.up3 = StyledUpBlock(2 * w, w)
        self.up4 = output_head(w)
        if residual and not residual_tanh:
            self.up4[-1] = nn.Identity()  # a linear correction (no parameters: the state_dict is unchanged)

    # ------------------------------------------------------------------------------------------- dictionary
    def attach_dictionary(self, dictionary: ComponentDictionary, dtype: torch.dtype | None = None) -> DFDNet:
        """Place the dictionary on this module's device once, instance-normalised, in ``dtype`` (default float32)."""
        if dictionary.config != self.config:
            raise ValueError(f"dictionary is for face size {dictionary.config.face_size} / ngf {dictionary.config.ngf}"
                             f", the generator for {self.config.face_size} / {self.config.ngf}")
        self.bank = None  # release the old one before building the new one
        self.bank = DictionaryBank(dictionary, device=self.VggExtract.RGB_mean.device, dtype=dtype)
        return self

    @property
    def fidelity(self) -> float:
        return self._fidelity

    @fidelity.setter
    def fidelity(self, value: float) -> None:
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"fidelity must be in [0, 1], got {value}")
        self._fidelity = float(value)

    def set_spectral_norm_power_iteration(self, enabled: bool) -> DFDNet:
        """True: one power iteration of every SN layer at the start of each forward, u and v updated — what the
        official test script does (it never leaves train mode) and what training does. Once per forward, not per
        call, so the result does not depend on how faces are split into batches (the confidence blocks run once
        per face) or into row bands."""
        self.power_iterate = enabled
        return self

    def attention_blocks(self, scale: int) -> dict[str, nn.Module]:
        return {part: getattr(self, f"{PART_PREFIXES[part]}_{scale}") for part in PARTS}

    # ------------------------------------------------------------------------------------------- forward
    def check_inputs(self, faces: torch.Tensor, part_boxes: torch.Tensor) -> None:
        size = self.config.face_size
        if faces.ndim != 4 or faces.shape[1] != 3 or faces.shape[2:] != (size, size):
            raise ValueError(f"faces must be (B, 3, {size}, {size}), got {tuple(faces.shape)}")
        if not faces.is_floating_point():
            raise ValueError(f"faces must be a float tensor in [-1, 1], got {faces.dtype}")
        if part_boxes.shape != (faces.shape[0], 4, 4):
            raise ValueError(f"part_boxes must be ({faces.shape[0]}, 4, 4) for {faces.shape[0]} faces, "
                             f"got {tuple(part_boxes.shape)}")
        if part_boxes.is_floating_point():
            raise ValueError(f"part_boxes must be an integer tensor, got {part_boxes.dtype}")

    def decode(self, conv5_4: torch.Tensor, styles: list[torch.Tensor]) -> torch.Tensor:
        """Decoder on the raw conv5_4 with the dictionary-updated taps as styles (finest first).

        ``styles`` is consumed (emptied) so that each map is freed once used."""
        h = self.MSDilate(conv5_4)
        for block in (self.up0, self.up1, self.up2):
            h = block(h, styles.pop())
        h = self.up3.modulate(h, styles.pop())
        # The last upsampling and the head run at full resolution: in bands at inference (same result).
        # Halo: 8 rows before the ×2 upsampling cover its bilinear edge and the 7 3×3 convs after it.
        return rowwise(lambda band: self.up4(self.up3.convup(band)), h, self._bands(), halo=8, up=2)

    def _bands(self) -> int:
        return 1 if torch.is_grad_enabled() else self.row_bands

    def restore(self, faces: torch.Tensor, part_boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As ``forward``, also returning the chosen dictionary entries (B, 4 scales, 4 parts), −1 where none."""
        self.check_inputs(faces, part_boxes)
        if self.power_iterate:
            for module in self.modules():
                if isinstance(module, SNConv2d):
                    module.converge(1)
        taps = self.VggExtract(faces, bands=self._bands())
        chosen = torch.full((faces.shape[0], len(taps), len(PARTS)), -1, dtype=torch.int64)
        if self.bank is None or self.fidelity == 0.0:
            return self._output(faces, self.decode(taps[3], taps)), chosen
        conv5_4 = taps[3]
        styles = []
        for i, scale in enumerate(self.config.scales):
            tap, taps[i] = taps[i], None  # hold each raw tap only while its scale is transferred
            stride = faces.shape[-1] // tap.shape[-1]
            updated, chosen[:, i] = transfer_scale(tap, part_boxes, stride, scale, self.bank,
                                                   self.attention_blocks(scale), self.fidelity)
            styles.append(updated)
        return self._output(faces, self.decode(conv5_4, styles)), chosen

    def _output(self, faces: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
        if not self.residual:
            return head
        restored = faces + head
        # Training sees the unclamped sum, so the loss pulls an overshoot back instead of going flat at ±1.
        return restored if self.training and torch.is_grad_enabled() else restored.clamp(-1.0, 1.0)

    def zero_output_layer(self) -> DFDNet:
        """Zero the head's last conv: a residual model then starts as the identity (its input, e.g. bicubic)."""
        last = self.up4[-2]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        return self

    def forward(self, faces: torch.Tensor, part_boxes: torch.Tensor) -> torch.Tensor:
        return self.restore(faces, part_boxes)[0]
