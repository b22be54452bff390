"""The registry of studies: name -> `Study` (one file per study)."""
from __future__ import annotations

from . import (aug_ablation, aug_strength, data_scale, distill_heads, recipe_rescue,
               teacher_kind)
from .spec import Study

STUDIES: dict[str, Study] = {
    "aug-strength": aug_strength.STUDY,
    "aug-ablation": aug_ablation.STUDY,
    "distill-heads": distill_heads.STUDY,
    "teacher-kind": teacher_kind.STUDY,
    "data-scale": data_scale.STUDY,
    "recipe-rescue": recipe_rescue.STUDY,
}
