"""BiFusion's 2D branch: an open_clip ViT visual tower turned into a dense CLIP feature map.

Two parts, kept apart so that stored and online features give the same map:

* `clip_image_features` (pure, no trainable state of ours): RGB uint8 images -> resize to the tower's input
  size (240x320 for BiFusion, the 4:3 ScanNet frame without cropping) -> CLIP mean/std -> the tower ->
  final-layer patch tokens (class token dropped) -> `ln_post` -> CLIP projection `proj` -> (B, D, h, w)
  float16 (ViT-B/16: D = 512, h x w = 15 x 20). This is what the precompute stage stores per image.
  `ClipImageEncoder` computes the same values online (frozen tower, or its last blocks unfrozen).
* `ClipFeatureReducer` (trainable): stored or online (B, D, h, w) -> 1x1 conv -> (B, 256, h, w).

The tower comes from `load_clip_visual`, i.e. `open_clip.create_model` with the input size forced to
240x320: open_clip builds a 15x20 patch grid and, when it loads a checkpoint trained at 224x224, resizes the
14x14 positional embedding with its own `resize_pos_embed` (bicubic; the class-token embedding is kept).
"""

from __future__ import annotations

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from torch import Tensor, nn

# (H, W): ScanNet frames are 4:3 (640x480 after the 2D export), so the whole frame maps to a 15x20 grid of
# 16 px ViT-B/16 patches with no crop; every point that projects into the frame lands on a patch.
CLIP_INPUT_SIZE = (240, 320)


def load_clip_visual(
    model_name: str = "ViT-B-16", pretrained: str | None = None, input_size: tuple[int, int] = CLIP_INPUT_SIZE
) -> VisionTransformer:
    """The visual tower of `open_clip.create_model(model_name, pretrained, force_image_size=input_size)`.

    pretrained: a local checkpoint file (a full open_clip CLIP state dict, loaded strictly), an open_clip
    pretrained tag (needs the network), or None for random weights. OpenAI's ViT-B/16 weights were trained
    with QuickGELU: load them with model_name "ViT-B-16-quickgelu". input_size is (H, W); the text tower is
    dropped. The tower comes back frozen: eval mode, `requires_grad=False`.
    """
    model = open_clip.create_model(model_name, pretrained=pretrained, force_image_size=input_size)
    visual = model.visual
    if not isinstance(visual, VisionTransformer):
        raise ValueError(f"model_name={model_name!r}: expected an open_clip VisionTransformer tower, got {type(visual).__name__}")
    return visual.requires_grad_(False).eval()


def preprocess_images(images: Tensor | np.ndarray, visual: VisionTransformer) -> Tensor:
    """RGB uint8 images (B, H, W, 3) or (H, W, 3) -> (B, 3, H', W') float32 at the tower's input size.

    The whole image is resized (bicubic with antialiasing, like open_clip's PIL bicubic, but in torch so
    that it is deterministic and runs on the GPU), then normalised with the tower's mean/std
    (`visual.preprocess_cfg`, set by `open_clip.create_model`). No crop: a 4:3 frame into a 4:3 input.
    """
    pixels = torch.as_tensor(images)
    if pixels.dtype != torch.uint8:
        raise ValueError(f"images: expected RGB uint8, got dtype {pixels.dtype}")
    if pixels.ndim == 3:
        pixels = pixels[None]
    if pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise ValueError(f"images: expected shape (B, H, W, 3) or (H, W, 3), got {tuple(torch.as_tensor(images).shape)}")
    preprocess_cfg = getattr(visual, "preprocess_cfg", None)
    if preprocess_cfg is None:
        raise ValueError("visual: no preprocess_cfg (mean/std); build the tower with load_clip_visual")
    device = visual.conv1.weight.device
    x = pixels.to(device).permute(0, 3, 1, 2).float() / 255.0
    x = F.interpolate(x, size=tuple(visual.image_size), mode="bicubic", align_corners=False, antialias=True).clamp(0.0, 1.0)
    mean = x.new_tensor(preprocess_cfg["mean"]).view(1, 3, 1, 1)
    std = x.new_tensor(preprocess_cfg["std"]).view(1, 3, 1, 1)
    return (x - mean) / std


def patch_token_map(visual: VisionTransformer, pixels: Tensor, trainable_blocks: int = 0) -> Tensor:
    """Projected patch tokens of preprocessed images (B, 3, H', W') as a map (B, D, h, w) float32.

    Runs the tower's blocks; all but the last `trainable_blocks` under `torch.no_grad()` (the frozen prefix
    keeps no activations). Then `ln_post` and `proj` on the patch tokens, exactly as open_clip applies them
    to the pooled token.
    """
    if not visual.transformer.batch_first:
        raise ValueError("visual.transformer: expected a batch-first open_clip transformer (open_clip >= 2.23)")
    blocks = visual.transformer.resblocks
    num_frozen = len(blocks) - trainable_blocks
    with torch.no_grad():
        # open_clip's own patch + class + positional embedding and ln_pre (what its forward runs first); private,
        # but re-implementing it would drift from the tower's config (patch dropout, no_ln_pre, ...).
        tokens = visual._embeds(pixels)
        for block in blocks[:num_frozen]:
            tokens = block(tokens)
    for block in blocks[num_frozen:]:
        tokens = block(tokens)
    tokens = visual.ln_post(tokens[:, 1:])
    if visual.proj is not None:
        tokens = tokens @ visual.proj
    grid_h, grid_w = visual.grid_size
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], grid_h, grid_w)


@torch.no_grad()
def clip_image_features(visual: VisionTransformer, images: Tensor | np.ndarray) -> Tensor:
    """What the precompute stage stores: RGB uint8 images -> (B, D, h, w) float16 CLIP patch features.

    Deterministic given the weights and the image; see the module docstring for the exact recipe. The tower
    must be in eval mode: in training mode open_clip's attention takes another kernel path (and patch dropout,
    where configured, drops tokens).
    """
    if any(module.training for module in visual.modules()):
        raise ValueError("visual: expected eval mode for stored CLIP features, call visual.eval() first")
    return patch_token_map(visual, preprocess_images(images, visual)).half()


def round_like_stored(features: Tensor) -> Tensor:
    """Values rounded to float16 as `clip_image_features` stores them, with the float32 gradient passed through."""
    return features + (features.half().float() - features).detach()


class ClipImageEncoder(nn.Module):
    """Online `clip_image_features`: the same values (as float32), with gradients into unfrozen blocks.

    The tower is frozen (`requires_grad=False`, eval mode whatever `train()` says) except its last
    `unfrozen_blocks` transformer blocks together with `ln_post` and `proj` (which follow them), which train
    in their own parameter group (`parameter_groups`) so the trainer can give them a lower learning rate.
    The output is rounded to float16 values like the stored features, so with a frozen tower the two paths
    feed the reducer bit-identical inputs. Unfrozen blocks in training mode run PyTorch's training attention
    kernels (rounding-level differences); once they have trained, stored features are stale anyway.
    """

    def __init__(self, visual: VisionTransformer, unfrozen_blocks: int = 0) -> None:
        super().__init__()
        num_blocks = len(visual.transformer.resblocks)
        if not 0 <= unfrozen_blocks <= num_blocks:
            raise ValueError(f"unfrozen_blocks: expected 0..{num_blocks}, got {unfrozen_blocks}")
        self.visual = visual
        self.unfrozen_blocks = unfrozen_blocks
        self.visual.requires_grad_(False)
        for module in self._unfrozen_modules():
            module.requires_grad_(True)
        if unfrozen_blocks and self.visual.proj is not None:
            self.visual.proj.requires_grad_(True)
        self.train(False)

    def _unfrozen_modules(self) -> list[nn.Module]:
        if self.unfrozen_blocks == 0:
            return []
        return [*self.visual.transformer.resblocks[-self.unfrozen_blocks :], self.visual.ln_post]

    def train(self, mode: bool = True) -> ClipImageEncoder:
        self.training = mode
        self.visual.eval()
        for module in self._unfrozen_modules():
            module.train(mode)
        return self

    def forward(self, images: Tensor | np.ndarray) -> Tensor:
        """RGB uint8 images (B, H, W, 3) or (H, W, 3) -> (B, D, h, w) float32 = clip_image_features(...).float()."""
        pixels = preprocess_images(images, self.visual)
        return round_like_stored(patch_token_map(self.visual, pixels, trainable_blocks=self.unfrozen_blocks))

    def parameter_groups(self, lr: float) -> list[dict]:
        """Optimizer groups for the unfrozen tower parameters (empty when fully frozen), all at `lr`."""
        params = [p for p in self.visual.parameters() if p.requires_grad]
        if not params:
            return []
        return [{"name": "clip_unfrozen_blocks", "params": params, "lr": lr}]


class ClipFeatureReducer(nn.Module):
    """Learned reduction of CLIP features (B, D, h, w), stored float16 or online float32, to (B, C, h, w) float32.

    A 1x1 convolution: per patch, linear in the CLIP embedding (a linear map commutes with the bilinear
    upsampling and sampling that follow, so reducing first only saves work).
    """

    def __init__(self, clip_channels: int = 512, out_channels: int = 256) -> None:
        super().__init__()
        self.clip_channels = clip_channels
        self.reduce = nn.Conv2d(clip_channels, out_channels, kernel_size=1)

    def forward(self, clip_features: Tensor) -> Tensor:
        if clip_features.ndim != 4 or clip_features.shape[1] != self.clip_channels:
            raise ValueError(f"clip_features: expected (B, {self.clip_channels}, h, w), got {tuple(clip_features.shape)}")
        return self.reduce(clip_features.float())
