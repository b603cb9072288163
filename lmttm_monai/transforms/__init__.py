from lmttm_monai.transforms.slices import RandAdjacentSlicesd, adjacent_slice_indices

__all__ = ["RandAdjacentSlicesd", "adjacent_slice_indices"]
