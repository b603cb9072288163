from lmttm_monai.data.csv_saver import ClassProbabilitySaver
from lmttm_monai.data.drive import DRIVE_SPLITS, drive_datalist
from lmttm_monai.data.medmnist3d import (
    MEDMNIST_3D_NAMES,
    MEDMNIST_EPOCHS,
    MEDMNIST_SIZES,
    MedMNIST3DDataset,
    class_weights,
    load_medmnist3d,
    medmnist_epochs,
    medmnist3d_datalist,
    medmnist_info,
    medmnist_npz_path,
)
from lmttm_monai.data.paths import data_root, default_dataset_dir
from lmttm_monai.data.saving import AtomicSaveImage, AtomicSaveImaged, unwritten
from lmttm_monai.data.segmentation import SPLITS, ValidateSegmentationd, decathlon_datalist, source_name
from lmttm_monai.data.saving import output_ext_for
from lmttm_monai.data.sitk_io import SaveLikeInputd, SimpleITKReader, SimpleITKWriter
from lmttm_monai.data.volumes import image_datalist, volume_datalist

__all__ = [
    "AtomicSaveImage",
    "AtomicSaveImaged",
    "ClassProbabilitySaver",
    "DRIVE_SPLITS",
    "drive_datalist",
    "MEDMNIST_3D_NAMES",
    "MEDMNIST_EPOCHS",
    "MEDMNIST_SIZES",
    "MedMNIST3DDataset",
    "SPLITS",
    "SaveLikeInputd",
    "SimpleITKReader",
    "SimpleITKWriter",
    "class_weights",
    "ValidateSegmentationd",
    "data_root",
    "decathlon_datalist",
    "default_dataset_dir",
    "image_datalist",
    "load_medmnist3d",
    "medmnist_epochs",
    "medmnist3d_datalist",
    "medmnist_info",
    "medmnist_npz_path",
    "output_ext_for",
    "source_name",
    "unwritten",
    "volume_datalist",
]
