"""dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``) in PyTorch, its weights read at
run time from dlib's own file (nothing is converted or stored beside it); descriptors equal dlib's to ~1e-6.

The file is dlib's binary serialization of ``anet_type`` of dlib's ``examples/dnn_face_recognition_ex.cpp``, laid
out as dlib/serialize.h, float_details.h, cuda/tensor.h, dnn/core.h, dnn/input.h and dnn/layers.h write it:

- integers: a control byte (low nibble: how many bytes follow; 0x80: negative), then the magnitude, little endian;
  bools: the characters '0' / '1'; strings: an integer length, then the bytes; floats (``float_details``): an
  integer mantissa then an integer exponent, value = mantissa * 2**exponent (exponents 32000-32002: inf, -inf, nan);
- tensors: version, num_samples, k, nr, nc, then the values (version 1: dlib floats; version 2: raw little-endian
  float32); alias tensors (shapes of views into a layer's flat parameter tensor): version and the 4 sizes;
- the network: the loss layer (version, name, margin, distance threshold), then the version of every wrapper from
  the outside in (add_layer 2; tag and skip layers 1), then the input layer, then each layer's details from the input
  outwards, each add_layer's followed by 3 bools and its (empty) gradient and output tensors.

dlib quirks reproduced here: convolutions and pools with stride 2 are unpadded (padding = size/2 only for stride 1),
and ``add_prev`` sums two tensors into one of the larger size in each dimension, missing entries counting as zero
(top-left aligned). So the 150-px chip becomes 72, 35, 17 and 8 px, then the 256-channel stages add a 3-px residual
path to a 4-px avg-pooled skip path (and 1 px to 2 px): the last two stages run on 4 and 2 px, zero-filled edges.
"""
from __future__ import annotations

import functools
import math
import os
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

DESCRIPTOR_SIZE = 128
_SPECIAL_EXPONENTS = {32000: math.inf, 32001: -math.inf, 32002: math.nan}


class DlibFormatError(ValueError):
    """The file is not a dlib network of the layers this port knows, or it is truncated."""


# --------------------------------------------------------------------------------------------- dlib serialization


class _Reader:
    """dlib's serialized primitives, read front to back from ``data``."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise DlibFormatError(f"file ends at byte {len(self.data)}; wanted {n} more bytes at byte {self.pos}")
        self.pos += n
        return self.data[self.pos - n:self.pos]

    def int(self) -> int:
        control = self.take(1)[0]
        if control & 0x0F > 8 or control & 0x70:
            raise DlibFormatError(f"bad integer control byte 0x{control:02x} at byte {self.pos - 1}")
        value = int.from_bytes(self.take(control & 0x0F), "little")
        return -value if control & 0x80 else value

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        return _SPECIAL_EXPONENTS[exponent] if exponent in _SPECIAL_EXPONENTS else math.ldexp(mantissa, exponent)

    def bool(self) -> bool:
        char = self.take(1)
        if char not in (b"0", b"1"):
            raise DlibFormatError(f"bad bool {char!r} at byte {self.pos - 1}")
        return char == b"1"

    def string(self) -> str:
        return self.take(self.int()).decode("latin-1")

    def version(self, what: str, known: tuple[int, ...]) -> int:
        version = self.int()
        if version not in known:
            raise DlibFormatError(f"{what} version {version} before byte {self.pos}; this reader knows {known}")
        return version

    def alias(self) -> tuple[int, ...]:
        self.version("alias_tensor", (1,))
        return tuple(self.int() for _ in range(4))

    def tensor(self) -> np.ndarray:
        """A dlib tensor → (num_samples * k * nr * nc,) float32 array."""
        version = self.version("tensor", (1, 2))
        count = math.prod(self.int() for _ in range(4))
        if version == 2:
            return np.frombuffer(self.take(4 * count), dtype="<f4").astype(np.float32)
        return np.array([self.float() for _ in range(count)], dtype=np.float32)


@dataclass
class DlibLayer:
    """One layer of the file, in forward order. ``kind``: dlib's layer name without its version ("input", "con",
    "affine", "relu", "max_pool", "avg_pool", "add_prev", "fc"); ``params``: its arrays, in torch's layouts;
    ``geometry``: filter size, strides and padding of con and pools, the image size of the input."""

    kind: str
    params: dict[str, np.ndarray] = field(default_factory=dict)
    geometry: dict[str, int] = field(default_factory=dict)


def _geometry(r: _Reader) -> dict[str, int]:
    return {key: r.int() for key in ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")}


def _split(params: np.ndarray, shape: tuple[int, ...], rest: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """A layer's flat parameters → (the first prod(shape) values reshaped, the ``rest`` values after them)."""
    size = math.prod(shape)
    if params.size != size + rest:
        raise DlibFormatError(f"{what}: {params.size} parameters, expected {size} + {rest}")
    return params[:size].reshape(shape), params[size:]


def _read_details(r: _Reader) -> DlibLayer:
    name = r.string()
    if name in ("con_4", "con_5"):
        params, num_filters, geometry = r.tensor(), r.int(), _geometry(r)
        filters, _biases, _multipliers = r.alias(), r.alias(), [r.float() for _ in range(4)]
        use_bias = r.bool() if name == "con_5" else True
        weight, bias = _split(params, filters, num_filters * use_bias, name)
        return DlibLayer("con", {"weight": weight} | ({"bias": bias} if use_bias else {}), geometry)
    if name == "affine_":
        params, gamma, _beta, _mode = r.tensor(), r.alias(), r.alias(), r.int()
        gamma, beta = _split(params, (math.prod(gamma),), math.prod(gamma), name)
        return DlibLayer("affine", {"gamma": gamma, "beta": beta})
    if name == "fc_2":
        num_outputs, num_inputs, params = r.int(), r.int(), r.tensor()
        _weights, _biases, bias_mode, _multipliers = r.alias(), r.alias(), r.int(), [r.float() for _ in range(4)]
        # dlib computes x @ W with W (inputs, outputs); torch's Linear keeps (outputs, inputs).
        weight, bias = _split(params, (num_inputs, num_outputs), num_outputs * (bias_mode == 0), name)
        return DlibLayer("fc", {"weight": weight.T.copy()} | ({"bias": bias} if bias_mode == 0 else {}))
    if name in ("max_pool_2", "avg_pool_2"):
        return DlibLayer(name[:-2], geometry=_geometry(r))
    if name in ("relu_", "add_prev_"):
        return DlibLayer(name[:-1])
    raise DlibFormatError(f"layer {name!r} before byte {r.pos}: not a layer of dlib's face-recognition ResNet")


def read_dlib_layers(path: str | os.PathLike) -> tuple[dict[str, float | str], list[DlibLayer]]:
    """A dlib ``loss_metric`` network file → (its loss settings, its input layer then its computational layers in
    forward order). Tag and skip layers only wire the residual paths: they leave nothing in the list."""
    with open(path, "rb") as f:
        r = _Reader(f.read())
    if r.int() != 1 or (name := r.string()) != "loss_metric_2":
        raise DlibFormatError(f"{path}: not a dlib loss_metric network like dlib_face_recognition_resnet_model_v1")
    loss = {"name": name, "margin": r.float(), "distance_threshold": r.float()}
    wrappers = []  # outermost first: add_layer 2 (3 over an input layer), tag and skip layers 1
    while (value := r.int()) in (1, 2, 3):
        wrappers.append(value)
    if r.take(value) != b"input_rgb_image_sized":  # value: the length of the input layer's name
        raise DlibFormatError(f"{path}: the input layer is not input_rgb_image_sized")
    mean = np.array([r.float() for _ in range(3)], dtype=np.float32)  # avg_red, avg_green, avg_blue
    layers = [DlibLayer("input", {"mean": mean}, {"nr": r.int(), "nc": r.int()})]
    for depth, version in enumerate(reversed(wrappers)):
        if version == 1:
            continue
        layers.append(_read_details(r))
        _flags, _tensors = [r.bool() for _ in range(3)], [r.tensor() for _ in range(3)]  # (empty) working state
        if depth == 0 and version == 3:
            r.int()  # the input add_layer's sample expansion factor
    if r.pos != len(r.data):
        raise DlibFormatError(f"{path}: {len(r.data) - r.pos} bytes left after the network")
    return loss, layers


# --------------------------------------------------------------------------------------------- layers → weights


def _expect(layers: list[DlibLayer], at: int, kinds: tuple[str, ...], size: int = 0, stride: int = 1) -> None:
    """layers[at:] start with ``kinds``, the first a ``size`` filter of ``stride`` with dlib's default padding."""
    got = tuple(layer.kind for layer in layers[at:at + len(kinds)])
    if got != kinds:
        raise DlibFormatError(f"layers {at}...: expected {kinds}, got {got}: not dlib's face-recognition ResNet")
    pad = size // 2 if stride == 1 else 0
    want = dict(nr=size, nc=size, stride_y=stride, stride_x=stride, padding_y=pad, padding_x=pad) if size else {}
    if want and layers[at].geometry != want:
        raise DlibFormatError(f"layer {at}: {kinds[0]} geometry {layers[at].geometry}, expected {want}")


def _walk(layers: list[DlibLayer]) -> tuple[dict[str, np.ndarray], list[tuple[int, int, bool]]]:
    """Forward-ordered layers → (DlibFaceEmbedder's state dict as arrays, blocks as (in, out, downsample))."""
    _expect(layers, 1, ("con", "affine", "relu"), 7, 2)
    _expect(layers, 4, ("max_pool",), 3, 2)
    stem, stem_affine = layers[1].params, layers[2].params
    state = {"mean": layers[0].params["mean"], "stem.weight": stem["weight"], "stem.bias": stem["bias"],
             "stem_affine": np.stack([stem_affine["gamma"], stem_affine["beta"]])}
    blocks, at = [], 5
    while at < len(layers) and layers[at].kind == "con":  # con affine relu con affine [avg_pool] add_prev relu
        down = at + 5 < len(layers) and layers[at + 5].kind == "avg_pool"
        _expect(layers, at, ("con", "affine", "relu"), 3, 1 + down)
        _expect(layers, at + 3, ("con", "affine"), 3, 1)
        _expect(layers, at + 5, ("avg_pool",) * down + ("add_prev", "relu"), 2 * down, 1 + down)
        for i, (conv, affine) in enumerate(((layers[at].params, layers[at + 1].params),
                                            (layers[at + 3].params, layers[at + 4].params)), start=1):
            prefix = f"blocks.{len(blocks)}"
            state |= {f"{prefix}.conv{i}.weight": conv["weight"], f"{prefix}.conv{i}.bias": conv["bias"],
                      f"{prefix}.affine{i}": np.stack([affine["gamma"], affine["beta"]])}
        blocks.append((layers[at].params["weight"].shape[1], layers[at].params["weight"].shape[0], down))
        at += 7 + down
    _expect(layers, at, ("avg_pool", "fc"))
    if layers[at].geometry["nr"] != 0 or len(layers) != at + 2 or "bias" in layers[at + 1].params:
        raise DlibFormatError("expected the network to end with avg_pool_everything then fc_no_bias")
    return state | {"fc.weight": layers[at + 1].params["weight"]}, blocks


def read_dlib_network(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """dlib's ``dlib_face_recognition_resnet_model_v1.dat`` → DlibFaceEmbedder's state dict of float32 tensors:
    ``mean`` (3,): input channel means in [0, 255]; ``stem.weight`` (32, 3, 7, 7), ``stem.bias`` (32,),
    ``stem_affine`` (2, 32): gamma, beta; per residual block ``blocks.{i}.conv{1,2}.weight`` (C_out, C_in, 3, 3),
    ``blocks.{i}.conv{1,2}.bias`` (C_out,), ``blocks.{i}.affine{1,2}`` (2, C_out); ``fc.weight`` (128, 256)."""
    state, _blocks = _walk(read_dlib_layers(path)[1])
    return {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in state.items()}


def default_model_path() -> str:
    """The face-recognition model file of the ``face_recognition_models`` package."""
    with warnings.catch_warnings():  # the package imports pkg_resources, which warns on import
        warnings.simplefilter("ignore")
        import face_recognition_models
    return face_recognition_models.face_recognition_model_location()


# --------------------------------------------------------------------------------------------- the network


def _affine(x: torch.Tensor, gamma_beta: torch.Tensor) -> torch.Tensor:
    """dlib's affine_ (batch norm folded at training's end): (B, C, H, W) * gamma[C] + beta[C]."""
    return x * gamma_beta[0].view(1, -1, 1, 1) + gamma_beta[1].view(1, -1, 1, 1)


def add_zero_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev: (B, Ca, Ha, Wa) + (B, Cb, Hb, Wb) → (B, max C, max H, max W), each input zero-filled at its
    high channels, bottom rows and right columns."""
    size = [max(s, t) for s, t in zip(a.shape[1:], b.shape[1:])]

    def grow(x: torch.Tensor) -> torch.Tensor:
        (c, h, w), (c2, h2, w2) = x.shape[1:], size
        return x if (c, h, w) == (c2, h2, w2) else F.pad(x, (0, w2 - w, 0, h2 - h, 0, c2 - c))
    return grow(a) + grow(b)


def _identity_affine(channels: int) -> torch.Tensor:
    return torch.stack([torch.ones(channels), torch.zeros(channels)])


class _Block(nn.Module):
    """dlib's ``ares`` / ``ares_down``: relu(add_prev(skip, affine(con(relu(affine(con(x))))))), the skip being x or,
    when downsampling, avg_pool 2x2 stride 2 of x; the first con then has stride 2 and no padding."""

    def __init__(self, c_in: int, c_out: int, down: bool):
        super().__init__()
        self.down = down
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=2 if down else 1, padding=0 if down else 1)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1)
        self.register_buffer("affine1", _identity_affine(c_out))
        self.register_buffer("affine2", _identity_affine(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _affine(self.conv2(F.relu(_affine(self.conv1(x), self.affine1))), self.affine2)
        return F.relu(add_zero_padded(F.avg_pool2d(x, 2, 2) if self.down else x, y))


# dlib's anet_type as (in channels, out channels, downsample): alevel4 = 3 x ares 32; alevel3 = ares_down 64 and
# 3 x ares 64; alevel2 = ares_down 128, 2 x ares 128; alevel1 = ares_down 256, 2 x ares 256; alevel0 = ares_down 256.
DLIB_V1_BLOCKS = ((32, 32, False),) * 3 + ((32, 64, True),) + ((64, 64, False),) * 3 + ((64, 128, True),) \
    + ((128, 128, False),) * 2 + ((128, 256, True),) + ((256, 256, False),) * 2 + ((256, 256, True),)


class DlibFaceEmbedder(nn.Module):
    """dlib's face-recognition ResNet: (B, 3, 150, 150) RGB face chips in [0, 255], aligned as
    ``dlib.get_face_chip(img, shape, size=150, padding=0.25)`` aligns them → (B, 128) descriptors, equal to
    ``dlib.face_recognition_model_v1(path).compute_face_descriptor(chip)`` (same person when closer than 0.6).

    Build it with :meth:`from_dlib_file`; the constructor alone gives the architecture with placeholder weights."""

    def __init__(self, blocks=DLIB_V1_BLOCKS, size: int = 150):
        super().__init__()
        self.size = size
        self.register_buffer("mean", torch.zeros(3))
        self.stem = nn.Conv2d(3, blocks[0][0], 7, stride=2, padding=0)
        self.register_buffer("stem_affine", _identity_affine(blocks[0][0]))
        self.blocks = nn.Sequential(*(_Block(c_in, c_out, down) for c_in, c_out, down in blocks))
        self.fc = nn.Linear(blocks[-1][1], DESCRIPTOR_SIZE, bias=False)

    @classmethod
    def from_dlib_file(cls, path: str | os.PathLike | None = None) -> DlibFaceEmbedder:
        """The network of dlib's model file ``path`` (default: face_recognition_models' copy), in eval mode."""
        _loss, layers = read_dlib_layers(default_model_path() if path is None else path)
        state, blocks = _walk(layers)
        if layers[0].geometry["nr"] != layers[0].geometry["nc"]:
            raise DlibFormatError(f"expected a square input layer, got {layers[0].geometry}")
        model = cls(tuple(blocks), size=layers[0].geometry["nr"])
        model.load_state_dict({name: torch.from_numpy(np.ascontiguousarray(v)) for name, v in state.items()})
        return model.eval()

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        """(B, 3, 150, 150) RGB chips in [0, 255], any float or uint8 dtype → (B, 128) in the weights' dtype."""
        if not isinstance(chips, torch.Tensor) or chips.ndim != 4 or chips.shape[1:] != (3, self.size, self.size):
            got = tuple(chips.shape) if isinstance(chips, torch.Tensor) else type(chips).__name__
            raise ValueError(f"expected (B, 3, {self.size}, {self.size}) RGB face chips in [0, 255], got {got}")
        x = (chips.to(self.mean.dtype) - self.mean.view(1, 3, 1, 1)) / 256.0  # dlib's input_rgb_image_sized
        x = F.max_pool2d(F.relu(_affine(self.stem(x), self.stem_affine)), 3, 2)
        return self.fc(self.blocks(x).mean(dim=(2, 3)))  # avg_pool_everything, fc_no_bias


@functools.cache
def _default_embedder() -> DlibFaceEmbedder:
    return DlibFaceEmbedder.from_dlib_file().eval()


def face_embeddings(chips: np.ndarray) -> np.ndarray:
    """(B, 150, 150, 3) uint8 RGB face chips (``dlib.get_face_chip``, padding 0.25) → (B, 128) float64 descriptors
    of dlib's face-recognition ResNet (dlib's own weights), in one batched pass."""
    batch = torch.from_numpy(np.ascontiguousarray(chips)).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        return _default_embedder()(batch).double().numpy()
