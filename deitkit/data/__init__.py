"""Dataset sources, augmentation stacks, batch mixing and samplers."""
from .sources import (DataError, DatasetBundle, TransformDataset, load_dataset,
                      load_unlabelled, stratified_subset)
from .transforms import build_eval_transform, build_mae_transform, build_train_transform
from .mixing import batch_seed, build_mixer, mix_batch, student_views
from .sampler import RepeatedAugSampler, SampleKey, ShardSampler

__all__ = ["DataError", "DatasetBundle", "TransformDataset", "load_dataset", "load_unlabelled",
           "stratified_subset",
           "build_train_transform", "build_eval_transform", "build_mae_transform", "build_mixer", "batch_seed",
           "mix_batch", "student_views", "RepeatedAugSampler", "SampleKey", "ShardSampler"]
