"""ConvTimeNet (Cheng et al., arXiv 2403.01493) adapted to window reconstruction: ``[B, L, C] -> [B, L, C]``.

Data path for one batch (B windows, C channels, patches N of P points, stride S, model width D):
RevIN per sample and channel -> replication pad by S at the end -> deformable patching ``[B*C, N, P]``
-> shared Linear(P -> D) ``[B*C, D, N]`` -> fully convolutional blocks -> flatten head Linear(D*N -> L)
-> undo RevIN.
Channels share weights and never mix; samples never mix in eval mode. Design notes: MODELS.md §2 and §3.2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.layers import LevelAutoencoder, WindowNorm


@dataclass(frozen=True)
class ConvTimeNetConfig:
    """Hyper-parameters of :class:`ConvTimeNet`; raises ``ValueError`` on an inconsistent combination.

    ``(window_length - patch_length)`` must be a multiple of ``patch_stride`` so that the regular patches
    tile the padded window exactly. Kernel sizes are odd (symmetric 'same' padding), at least
    ``small_kernel`` (it is merged into them) and at most ``2 * n_patches - 1`` (wider taps would only ever
    see padding).

    Left unset (``None``), the patches and kernels follow the window (:func:`auto_patches`,
    :func:`auto_kernels`): about ten tokens per channel whatever the window length, which EVALUATION.md
    measured better and 1.65x cheaper to serve than the fixed patches of 8 (24 tokens at L = 100).
    """

    window_length: int
    n_features: int
    # None: chosen from the window length (auto_patches): P = 20, S = 10 at L = 100.
    patch_length: int | None = None
    patch_stride: int | None = None
    # Lighter than the forecasting defaults (64, 256, six blocks): the pointwise FFN was ~94 % of the cost, and
    # a served model scores every window of every stream. Kernels still grow with depth, up to 19 on N = 25.
    d_model: int = 32
    d_ff: int = 64
    # None: DEFAULT_KERNELS, those wider than the token sequence replaced by its widest kernel (auto_kernels).
    kernel_sizes: tuple[int, ...] | None = None
    small_kernel: int = 3
    dropout: float = 0.05
    head_dropout: float = 0.0
    offset_hidden: int = 64
    residual_scale_init: float = 1e-8
    # False: regular patches (plain unfolding), no offset network: the ablation of the deformable layer.
    deformable: bool = True
    # Width of the level autoencoder's bottleneck (models.layers.LevelAutoencoder, as in TVNet); 0: none.
    level_bottleneck: int = 0
    level_clip: float = 10.0
    # True: the exported graph runs each depthwise conv as a band-matrix product over the tokens
    # (ConvBlock.banded_depthwise): the same function, faster in ONNX Runtime on CPU (BENCHMARKS.md); on the
    # 14 SMD machines every evaluation figure came out the same as with the grouped conv (VUS-PR within 3e-8,
    # alerts identical; row convtimenet_conv). False: the grouped conv, as exported before 2026-12-06.
    band_depthwise: bool = True

    def __post_init__(self) -> None:
        if self.level_bottleneck < 0:
            raise ValueError(f"ConvTimeNet: level_bottleneck must be >= 0, got {self.level_bottleneck}")
        # A config read back from a JSON bundle carries a list; keep the dataclass hashable and comparable.
        if self.window_length < 2:
            raise ValueError(f"ConvTimeNet: window_length must be >= 2, got {self.window_length}")
        if self.patch_length is None or self.patch_stride is None:
            if self.patch_length is not None or self.patch_stride is not None:
                raise ValueError(
                    "ConvTimeNet: set both patch_length and patch_stride, or neither (automatic)"
                )
            patch, stride = auto_patches(self.window_length)
            object.__setattr__(self, "patch_length", patch)
            object.__setattr__(self, "patch_stride", stride)
        if self.kernel_sizes is None:
            object.__setattr__(self, "kernel_sizes", auto_kernels(self.n_patches, self.small_kernel))
        # A config read back from a JSON bundle carries a list; keep the dataclass hashable and comparable.
        object.__setattr__(self, "kernel_sizes", tuple(int(k) for k in self.kernels))
        for name in ("window_length", "n_features", "patch_stride", "d_model", "d_ff", "offset_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"ConvTimeNet: {name} must be >= 1, got {getattr(self, name)}")
        length, patch, stride = self.window_length, self.patch, self.stride
        if not 2 <= patch <= length:
            raise ValueError(f"ConvTimeNet: patch_length must be in [2, window_length={length}], got {patch}")
        if (length - patch) % stride != 0:
            raise ValueError(
                f"ConvTimeNet: (window_length - patch_length) % patch_stride must be 0 so patches tile the "
                f"window, got ({length} - {patch}) % {stride} = {(length - patch) % stride}; "
                f"e.g. window_length=100 works with (patch_length, patch_stride) = (8, 4) or (20, 10)"
            )
        if self.small_kernel < 1 or self.small_kernel % 2 == 0:
            raise ValueError(f"ConvTimeNet: small_kernel must be positive and odd, got {self.small_kernel}")
        if not self.kernels:
            raise ValueError("ConvTimeNet: kernel_sizes needs at least one entry (one encoder block each)")
        widest = 2 * self.n_patches - 1
        for kernel in self.kernels:
            if kernel % 2 == 0 or not self.small_kernel <= kernel <= widest:
                raise ValueError(
                    f"ConvTimeNet: every kernel size must be odd and in [small_kernel={self.small_kernel}, "
                    f"2 * n_patches - 1 = {widest}], got {kernel} in {self.kernel_sizes}"
                )
        for name in ("dropout", "head_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"ConvTimeNet: {name} must be in [0, 1), got {getattr(self, name)}")

    # The resolved values, typed as set (__post_init__ fills every None).
    @property
    def patch(self) -> int:
        assert self.patch_length is not None
        return self.patch_length

    @property
    def stride(self) -> int:
        assert self.patch_stride is not None
        return self.patch_stride

    @property
    def kernels(self) -> tuple[int, ...]:
        assert self.kernel_sizes is not None
        return self.kernel_sizes

    @property
    def n_patches(self) -> int:
        """N: regular patches of the window plus the one the end padding adds."""
        return (self.window_length - self.patch) // self.stride + 2

    @property
    def padded_length(self) -> int:
        """W = L + S = (N - 1) * S + P."""
        return self.window_length + self.stride


DEFAULT_KERNELS = (5, 9, 13, 19)


def auto_patches(window_length: int) -> tuple[int, int]:
    """``(patch_length, patch_stride)`` for a window of ``window_length`` >= 2 points: 8-12 tokens from L = 20.

    S = round(L / 10) (at least 1) and P = 2S + (L mod S), so that patches overlap by half and
    ``(L - P) % S == 0`` holds for every L: (20, 10) at L = 100, (4, 2) at L = 24, (2, 1) below L = 15.
    Fewer, longer patches than the forecasting defaults: on SMD, patches of 20 beat patches of 8 on every
    measure at 2.5x fewer tokens (EVALUATION.md, ConvTimeNet ablations).
    """
    stride = max(1, round(window_length / 10))
    patch = min(window_length, 2 * stride + window_length % stride)
    return patch, stride


def auto_kernels(n_patches: int, small_kernel: int = 3) -> tuple[int, ...]:
    """DEFAULT_KERNELS that fit ``N`` tokens (odd, at most 2N - 1), then the widest one if any was cut."""
    widest = 2 * n_patches - 1
    kernels = [k for k in DEFAULT_KERNELS if k <= widest]
    if len(kernels) < len(DEFAULT_KERNELS) and widest >= small_kernel and widest not in kernels:
        kernels.append(widest)
    return tuple(kernels)


class DeformablePatching(nn.Module):
    """Per-channel patches whose centre and width are predicted from the series (DePatch sampling).

    ``forward(x: [B', W]) -> [B', N, P]`` where B' = batch * channels and W = (N - 1) * S + P. Box i is
    centred at ``i*S + (P-1)/2 + dx`` with half-width ``relu(ds + (P-1)/2)``, clamped to [0, W-1]; P evenly
    spaced points in the box are read by linear interpolation in time. With dx = ds = 0 the patches equal
    plain unfolding.
    """

    centres: Tensor  # [N]
    steps: Tensor  # [P]

    def __init__(self, patch_length: int, patch_stride: int, n_patches: int, hidden: int) -> None:
        super().__init__()
        self.patch_length = patch_length
        self.n_patches = n_patches
        self.padded_length = (n_patches - 1) * patch_stride + patch_length
        # A strided conv over the series is Linear(P -> hidden) on every regular patch, without an unfold.
        self.hidden = nn.Conv1d(1, hidden, patch_length, stride=patch_stride)
        self.offset = nn.Conv1d(hidden, 2, 1)
        # Zeroing the output layer alone starts training from uniform patching. The official code also zeroes
        # the hidden layer, which leaves every weight but the output bias with a zero gradient forever, so its
        # offsets can never depend on the input.
        for parameter in self.offset.parameters():
            nn.init.zeros_(parameter)
        centres = torch.arange(n_patches, dtype=torch.float32) * patch_stride + (patch_length - 1) / 2
        steps = torch.arange(patch_length, dtype=torch.float32)
        self.register_buffer("centres", centres, persistent=False)
        self.register_buffer("steps", steps, persistent=False)

    def predict_offsets(self, x: Tensor) -> Tensor:
        """``x: [B', W] -> (dx, ds): [B', 2, N]``, in time steps."""
        offsets: Tensor = self.offset(F.gelu(self.hidden(x.unsqueeze(1))))
        return offsets

    def sample(self, x: Tensor, offsets: Tensor) -> Tensor:
        """``x: [B', W]``, ``offsets: [B', 2, N]`` -> patches ``[B', N, P]``."""
        last = float(self.padded_length - 1)
        centre = self.centres + offsets[:, 0]  # [B', N]
        half_width = F.relu(offsets[:, 1] + (self.patch_length - 1) / 2)  # [B', N]
        # Out-of-place clamps: in-place writes export as ScatterND, which ORT runs on the CPU.
        left = (centre - half_width).clamp(0.0, last)
        right = (centre + half_width).clamp(0.0, last)
        # Multiply before dividing: zero offsets then give exact integer positions, i.e. exact unfolding.
        span = (right - left).unsqueeze(-1) * self.steps / (self.patch_length - 1)  # [B', N, P]
        position = (left.unsqueeze(-1) + span).reshape(-1, self.n_patches * self.patch_length)  # [B', N*P]
        # Gathers instead of grid_sample: GridSample has no reliable CUDA kernel in ORT (MODELS.md §3.2).
        # Capping the lower index at W-2 keeps its neighbour in range; position W-1 then gets weight 1.
        lower = position.floor().clamp(0.0, last - 1.0)
        weight = position - lower
        index = lower.long()
        left_value = torch.gather(x, 1, index)
        right_value = torch.gather(x, 1, index + 1)
        # This form is exact at both ends (weight 0 or 1), so integer positions copy samples bit for bit.
        patches = left_value * (1.0 - weight) + right_value * weight  # [B', N*P]
        return patches.reshape(-1, self.n_patches, self.patch_length)

    def forward(self, x: Tensor) -> Tensor:
        return self.sample(x, self.predict_offsets(x))


class RegularPatching(nn.Module):
    """Fixed patches: ``forward(x: [B', W]) -> [B', N, P]``, patch i = x[i*S : i*S + P] (what deformable
    patching starts from). One Gather with constant indices (ONNX has no Unfold of a dynamic batch)."""

    index: Tensor  # [N*P]

    def __init__(self, patch_length: int, patch_stride: int, n_patches: int) -> None:
        super().__init__()
        self.shape = (n_patches, patch_length)
        starts = torch.arange(n_patches) * patch_stride
        self.register_buffer(
            "index", (starts[:, None] + torch.arange(patch_length)).reshape(-1), persistent=False
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.index_select(x, 1, self.index).reshape(-1, *self.shape)


class ConvBlock(nn.Module):
    """Depthwise large-kernel conv, then a pointwise FFN; each sub-layer is ``norm(x + dropout(a * f(x)))``.

    ``forward(x: [B', D, N]) -> [B', D, N]``; ``a`` is a learnable scalar. A parallel small depthwise kernel
    aids training; :meth:`merge_small_kernel` folds it into the large one (structural re-parameterisation).
    """

    band_taps: Tensor
    band_inside: Tensor

    def __init__(self, config: ConvTimeNetConfig, kernel_size: int) -> None:
        super().__init__()
        width, small = config.d_model, config.small_kernel
        self.depthwise = nn.Conv1d(width, width, kernel_size, padding=kernel_size // 2, groups=width)
        # The same depthwise conv as a band matrix over the N tokens (see banded_depthwise): which kernel tap
        # links output token t to input token s, and whether it lies inside the kernel (else zero padding).
        tokens = torch.arange(config.n_patches)
        taps = tokens[None, :] - tokens[:, None] + kernel_size // 2  # [t, s]
        inside = (taps >= 0) & (taps < kernel_size)
        self.register_buffer("band_taps", taps.clamp(0, kernel_size - 1), persistent=False)
        self.register_buffer("band_inside", inside.to(torch.float32), persistent=False)
        self.banded = False  # set by prepare_for_export: the exported graph runs the band form
        self.depthwise_small: nn.Conv1d | None
        self.depthwise_small = nn.Conv1d(width, width, small, padding=small // 2, groups=width)
        # Near-zero residual scales make every block start as the identity (then BatchNorm), as in the
        # official forecasting code; Adam grows them at about the learning rate per step.
        self.conv_scale = nn.Parameter(torch.tensor(config.residual_scale_init))
        self.conv_norm = nn.BatchNorm1d(width)
        self.ffn = nn.Sequential(
            nn.Conv1d(width, config.d_ff, 1),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Conv1d(config.d_ff, width, 1),
        )
        self.ffn_scale = nn.Parameter(torch.tensor(config.residual_scale_init))
        self.ffn_norm = nn.BatchNorm1d(width)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        mixed = self.banded_depthwise(x) if self.banded else self.depthwise(x)
        if self.depthwise_small is not None:
            mixed = mixed + self.depthwise_small(x)
        x = self.conv_norm(x + self.dropout(self.conv_scale * F.gelu(mixed)))
        # The FFN output feeds the next block (before the official fix 95cfd6d it was computed and dropped).
        out: Tensor = self.ffn_norm(x + self.dropout(self.ffn_scale * self.ffn(x)))
        return out

    def banded_depthwise(self, x: Tensor) -> Tensor:
        """``self.depthwise(x)`` as one batched matrix product over the N tokens: ``out[b, d, t] = Σ_s
        M[d, t, s] · x[b, d, s] + bias[d]``, ``M[d, t, s]`` the kernel tap that links them (zero outside the
        kernel: the conv's zero padding). With N = 10 tokens and kernels of 5-19, ONNX Runtime's CPU grouped
        convolution spent 27-42 ms per layer on a batch of 256 windows x 38 channels, more than half of the
        graph's time (``bench.onnx_profile``); the band matrix depends only on the weights, so ONNX Runtime
        folds it into a constant when the session loads."""
        weight = self.depthwise.weight[:, 0, :]  # [D, K]
        band = weight[:, self.band_taps] * self.band_inside  # [D, N(t), N(s)]
        mixed = torch.matmul(x.transpose(0, 1), band.transpose(1, 2)).transpose(0, 1)  # [B', D, N]
        if self.depthwise.bias is not None:
            mixed = mixed + self.depthwise.bias[:, None]
        return mixed

    @torch.no_grad()
    def merge_small_kernel(self) -> None:
        """Add the small kernel (zero-padded to the large size) and its bias to the large conv; idempotent."""
        small = self.depthwise_small
        if small is None:
            return
        pad = (self.depthwise.kernel_size[0] - small.kernel_size[0]) // 2
        self.depthwise.weight.add_(F.pad(small.weight, (pad, pad)))
        if self.depthwise.bias is not None and small.bias is not None:
            self.depthwise.bias.add_(small.bias)
        self.depthwise_small = None


class ConvTimeNet(nn.Module):
    """Reconstruct normalised windows: ``forward(x: [B, L, C]) -> [B, L, C]``.

    Each window is re-normalised per channel (RevIN without affine, statistics detached) and the statistics
    are restored after the head, so the model only has to reproduce the shape of each channel. In eval mode
    samples are independent (BatchNorm uses its running statistics).
    """

    def __init__(self, config: ConvTimeNetConfig) -> None:
        super().__init__()
        self.config = config
        n_patches = config.n_patches
        self.revin = WindowNorm(config.window_length)  # batch-invariant statistics (see models.layers)
        self.patching: nn.Module = (
            DeformablePatching(config.patch, config.stride, n_patches, config.offset_hidden)
            if config.deformable
            else RegularPatching(config.patch, config.stride, n_patches)
        )
        self.embed = nn.Linear(config.patch, config.d_model)
        self.blocks = nn.ModuleList(ConvBlock(config, kernel) for kernel in config.kernels)
        self.head = nn.Linear(config.d_model * n_patches, config.window_length)
        self.head_dropout = nn.Dropout(config.head_dropout)
        self.level = (
            LevelAutoencoder(config.n_features, config.level_bottleneck, config.level_clip)
            if config.level_bottleneck
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        length, channels = self.config.window_length, self.config.n_features
        z, mean, std = self.revin.normalise(x)  # [B, L, C], stats [B, 1, C]
        series = z.transpose(1, 2).reshape(-1, 1, length)  # [B*C, 1, L], row = b*C + c
        series = F.pad(series, (0, self.config.stride), mode="replicate")
        series = series.reshape(-1, self.config.padded_length)  # [B*C, W]
        patches = self.patching(series)  # [B*C, N, P]
        hidden = self.embed(patches).transpose(1, 2)  # [B*C, D, N]
        for block in self.blocks:
            hidden = block(hidden)  # [B*C, D, N]
        flat = hidden.reshape(-1, channels, self.config.d_model * self.config.n_patches)  # [B, C, D*N]
        out: Tensor = self.head_dropout(self.head(flat)).transpose(1, 2)  # [B, L, C]
        return self.revin.denormalise(out, self.level(mean, std) if self.level is not None else mean, std)

    def prepare_for_export(self) -> None:
        """Fold every block's small depthwise kernel into its large one, so eval runs one conv, and with
        ``band_depthwise`` run that conv in its band-matrix form (``ConvBlock.banded_depthwise``: the same
        function, faster in ONNX Runtime on CPU: BENCHMARKS.md); idempotent. Afterwards training continues with
        the single merged kernel per block."""
        for block in self.blocks:
            if isinstance(block, ConvBlock):
                block.merge_small_kernel()
                block.banded = self.config.band_depthwise
