from lmttm_monai.data.medmnist3d import (
    MEDMNIST_3D_NAMES,
    MEDMNIST_SIZES,
    MedMNIST3DDataset,
    default_dataset_dir,
    load_medmnist3d,
    medmnist_info,
    medmnist_npz_path,
)
from lmttm_monai.data.volumes import volume_datalist

__all__ = [
    "MEDMNIST_3D_NAMES",
    "MEDMNIST_SIZES",
    "MedMNIST3DDataset",
    "default_dataset_dir",
    "load_medmnist3d",
    "medmnist_info",
    "medmnist_npz_path",
    "volume_datalist",
]
