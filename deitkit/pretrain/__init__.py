"""Self-supervised pretraining of a student's encoder on unlabelled images (MAE)."""
from .mae import MaskedAutoencoder, kept_patches, patchify, random_masking, unpatchify
from .run import build_mae, encoder_name, format_summary, pretrain

__all__ = ["MaskedAutoencoder", "kept_patches", "patchify", "random_masking", "unpatchify",
           "build_mae", "encoder_name", "format_summary", "pretrain"]
