from lmttm_monai.inferers.adjacent_slice import AdjacentSliceInferer

__all__ = ["AdjacentSliceInferer"]
