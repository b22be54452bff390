"""A masked autoencoder (He et al. 2022, arXiv:2111.06377) over a DeiT student's own encoder.

The encoder is the timm `VisionTransformer` the student is built as (same name, patch size,
image size and overrides, without the distillation token and heads), so its state dict loads
into `deitkit train` unchanged (`models.pretrained.load_pretrained`: the distillation token
starts from the class token, the heads fresh). The decoder is built from timm's transformer
`Block` and timm's fixed 2-D sine-cosine position embedding.

Written here because timm has no MAE: timm's `PatchDropout` drops patches at random but draws
from the global stream and keeps no restore order, while MAE needs an exact, seeded share of
patches per image and the order to put the mask tokens back (its ids_restore).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from timm.layers import build_sincos2d_pos_embed
from timm.models.vision_transformer import Block
from torch import nn


class Masking(NamedTuple):
    keep: torch.Tensor     # [B, K] indices of the visible patches, in shuffled order
    restore: torch.Tensor  # [B, N] position of each patch in the shuffled order
    mask: torch.Tensor     # [B, N] 1 where the patch is hidden, 0 where visible


def kept_patches(num_patches: int, mask_ratio: float) -> int:
    """How many of `num_patches` stay visible at `mask_ratio` (at least 1, at most all but 1)."""
    return min(num_patches - 1, max(1, round(num_patches * (1.0 - mask_ratio))))


def random_masking(batch: int, num_patches: int, mask_ratio: float,
                   generator: torch.Generator, device: torch.device) -> Masking:
    """Per image, a uniformly random set of exactly `kept_patches` visible patches, drawn from
    `generator` (on the CPU, so the same seed gives the same masks on every device)."""
    k = kept_patches(num_patches, mask_ratio)
    noise = torch.rand(batch, num_patches, generator=generator)         # [B, N]
    shuffle = noise.argsort(dim=1)                                      # ascending: kept first
    restore = shuffle.argsort(dim=1)                                    # [B, N]
    mask = torch.ones(batch, num_patches)
    mask[:, :k] = 0
    mask = mask.gather(1, restore)                                      # back to patch order
    return Masking(shuffle[:, :k].to(device), restore.to(device), mask.to(device))


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, N, p*p*C], patches in row-major order (as timm's patch embedding)."""
    b, c, h, w = imgs.shape
    x = imgs.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(x: torch.Tensor, p: int, grid: tuple[int, int], channels: int = 3) -> torch.Tensor:
    """[B, N, p*p*C] -> [B, C, H, W]: the inverse of `patchify`."""
    gh, gw = grid
    x = x.reshape(x.shape[0], gh, gw, p, p, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(x.shape[0], channels, gh * p, gw * p)


class MaskedAutoencoder(nn.Module):
    """`encoder` (a plain timm ViT with one class token) plus a light decoder."""

    def __init__(self, encoder: nn.Module, decoder_dim: int = 128, decoder_depth: int = 2,
                 decoder_heads: int = 4, norm_pix_loss: bool = True):
        super().__init__()
        if getattr(encoder, "num_prefix_tokens", 1) != 1 or getattr(encoder, "no_embed_class",
                                                                     False):
            raise ValueError("MAE needs a ViT with exactly one class token and a position "
                             "embedding that includes it (a plain DeiT)")
        self.encoder = encoder
        self.patch = encoder.patch_embed.patch_size[0]
        self.grid = tuple(encoder.patch_embed.grid_size)
        self.norm_pix_loss = norm_pix_loss
        dim, n = encoder.embed_dim, self.grid[0] * self.grid[1]
        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        pos = build_sincos2d_pos_embed(list(self.grid), decoder_dim)        # [N, Dd], fixed
        self.register_buffer("decoder_pos_embed",
                             torch.cat([torch.zeros(1, decoder_dim), pos])[None], persistent=False)
        self.decoder_blocks = nn.Sequential(*[Block(decoder_dim, decoder_heads, mlp_ratio=4.0,
                                                    qkv_bias=True) for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch ** 2 * 3)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in [self.decoder_embed, self.decoder_pred, *self.decoder_blocks.modules()]:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.num_patches = n

    def decoder_state(self) -> dict:
        """Everything but the encoder (what a resume needs besides the encoder's weights)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("encoder.")}

    def encode(self, imgs: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """The encoder on the visible patches only: [B, 1 + K, D] (class token first)."""
        enc = self.encoder
        x = enc.patch_embed(imgs)                                       # [B, N, D]
        x = x + enc.pos_embed[:, 1:]
        x = x.gather(1, keep[..., None].expand(-1, -1, x.shape[-1]))    # [B, K, D]
        cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = enc.pos_drop(torch.cat([cls, x], dim=1))
        x = enc.blocks(enc.norm_pre(x))
        return enc.norm(x)

    def decode(self, latent: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
        """Mask tokens put back in patch order, then the decoder: [B, N, p*p*3]."""
        y = self.decoder_embed(latent)                                  # [B, 1 + K, Dd]
        b, k1, dd = y.shape
        masks = self.mask_token.expand(b, self.num_patches - (k1 - 1), -1)
        full = torch.cat([y[:, 1:], masks], dim=1)                      # [B, N, Dd] shuffled
        full = full.gather(1, restore[..., None].expand(-1, -1, dd))    # patch order
        y = torch.cat([y[:, :1], full], dim=1) + self.decoder_pos_embed  # [B, 1 + N, Dd]
        y = self.decoder_norm(self.decoder_blocks(y))
        return self.decoder_pred(y[:, 1:])

    def target(self, imgs: torch.Tensor) -> torch.Tensor:
        """What the decoder predicts: patch pixels, per-patch normalised with norm_pix_loss."""
        t = patchify(imgs, self.patch)                                  # [B, N, p*p*3]
        if self.norm_pix_loss:
            mean, var = t.mean(-1, keepdim=True), t.var(-1, keepdim=True)
            t = (t - mean) / (var + 1e-6).sqrt()
        return t

    def forward(self, imgs: torch.Tensor, masking: Masking) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, prediction [B, N, p*p*3]): mean squared error over the hidden patches."""
        pred = self.decode(self.encode(imgs, masking.keep), masking.restore)
        err = (pred.float() - self.target(imgs).float()).pow(2).mean(-1)  # [B, N]
        return (err * masking.mask).sum() / masking.mask.sum(), pred

    def reconstruct(self, imgs: torch.Tensor, pred: torch.Tensor, masking: Masking,
                    paste_visible: bool = True) -> torch.Tensor:
        """The prediction as an image in `imgs`' units (per-patch statistics of the real
        patches undone with norm_pix_loss), the visible patches pasted from `imgs`."""
        t = patchify(imgs, self.patch)
        pred = pred.float()
        if self.norm_pix_loss:
            pred = pred * (t.var(-1, keepdim=True) + 1e-6).sqrt() + t.mean(-1, keepdim=True)
        if paste_visible:
            m = masking.mask[..., None]
            pred = pred * m + t * (1 - m)
        return unpatchify(pred, self.patch, self.grid)

    def masked_input(self, imgs: torch.Tensor, masking: Masking,
                     fill: Optional[torch.Tensor] = None) -> torch.Tensor:
        """`imgs` with the hidden patches set to `fill` (default 0, the normalised mean)."""
        t = patchify(imgs, self.patch)
        m = masking.mask[..., None]
        fill_t = torch.zeros_like(t) if fill is None else fill
        return unpatchify(t * (1 - m) + fill_t * m, self.patch, self.grid)
