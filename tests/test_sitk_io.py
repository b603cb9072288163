"""SimpleITK reading and writing on a real Hippocampus volume and label, converted here to NIfTI, MetaImage, NRRD
and a DICOM series, with an oblique direction and a shifted origin so that the geometry is really exercised; and
mam_swinunetr inference on each format."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from bundle_helpers import bundle
from conftest import REPO_ROOT
from monai.bundle import ConfigParser
from monai.data import NibabelReader, resolve_writer
from monai.data.image_writer import SUPPORTED_WRITERS
from monai.data.utils import is_no_channel
from monai.transforms import LoadImaged, SaveImaged

from lmttm_monai.data import SaveLikeInputd, SimpleITKReader, SimpleITKWriter, image_datalist, output_ext_for
from lmttm_monai.data import sitk_io

CASE = "hippocampus_004"  # float32 voxels; hippocampus_033 is one of the uint8 ones
UINT8_CASE = "hippocampus_033"
FILE_FORMATS = (".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")
IMAGE_IO = {  # the ImageIO SimpleITK picks for each extension: the format family of a written file
    ".nii.gz": "NiftiImageIO", ".nii": "NiftiImageIO", ".mha": "MetaImageIO", ".mhd": "MetaImageIO",
    ".nrrd": "NrrdImageIO", ".nhdr": "NrrdImageIO",
}  # fmt: skip


def rotation(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    """The rotation by ``degrees`` about ``axis`` (Rodrigues)."""
    k = np.asarray(axis, float) / np.linalg.norm(axis)
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    t = np.deg2rad(degrees)
    return np.eye(3) + np.sin(t) * K + (1 - np.cos(t)) * K @ K


# oblique but right-handed, as DICOM requires: GDCM rebuilds the slice axis as row x column and would otherwise flip
# it (and the slice order) -- the same physical volume, but no longer the same array
DIRECTION = rotation((1.0, 2.0, 3.0), 25.0) @ np.diag([-1.0, -1.0, 1.0])  # LPS, the real volume's axes turned
ORIGIN = (12.5, -30.25, 7.75)
SPACING = (0.9, 1.1, 1.3)


def with_geometry(array_zyx: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array_zyx)  # a fresh image: none of the NIfTI header's fields ride along
    image.SetDirection(DIRECTION.ravel().tolist())
    image.SetOrigin(ORIGIN)
    image.SetSpacing(SPACING)
    return image


def _ds(value: float) -> str:
    return np.format_float_positional(value, precision=10, trim="-")  # DICOM DS values hold at most 16 characters


def write_dicom_series(image: sitk.Image, folder: Path, series_uid: str = "1.2.826.0.1.3680043.2.1125.4.1") -> None:
    """One int16 file per slice, with the position, orientation and spacing tags a reader rebuilds the grid from."""
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.Cast(image, sitk.sitkInt16)
    d, spacing = image.GetDirection(), image.GetSpacing()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()  # keep the UIDs set below instead of generating new ones per file
    # GDCM leaves the process locale at "C" after writing an orientation tag, which would make this pytest process
    # decode the bundle run's (UTF-8) output as ASCII (and any later test too): sitk_io's guard puts it back
    with sitk_io._locale_kept():
        for k in range(image.GetDepth()):
            slice_ = image[:, :, k]
            tags = {
                "0008|0060": "MR",
                "0008|0018": f"{series_uid}.{k + 1}",  # SOP Instance UID
                "0020|000d": "1.2.826.0.1.3680043.2.1125.4",  # Study Instance UID
                "0020|000e": series_uid,  # Series Instance UID
                "0020|0013": str(k + 1),  # Instance Number
                "0020|0032": "\\".join(_ds(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
                "0020|0037": "\\".join(_ds(v) for v in (d[0], d[3], d[6], d[1], d[4], d[7])),  # row, column cosines
                "0028|0030": f"{_ds(spacing[1])}\\{_ds(spacing[0])}",  # Pixel Spacing: between rows, then columns
                "0018|0050": _ds(spacing[2]),  # Slice Thickness
            }
            for tag, value in tags.items():
                slice_.SetMetaData(tag, value)
            writer.SetFileName(str(folder / f"series{series_uid.rsplit('.', 1)[-1]}_{k:03d}.dcm"))
            writer.Execute(slice_)


def geometry(path: Path | str) -> tuple:
    """Size, spacing, origin and direction of a file or DICOM folder as SimpleITK reads them."""
    path = str(path)
    if os.path.isdir(path):
        image = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(path))
    else:
        image = sitk.ReadImage(path)
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def assert_same_grid(written: Path | str, source: Path | str) -> None:
    (size, spacing, origin, direction), (size0, spacing0, origin0, direction0) = geometry(written), geometry(source)
    assert size == size0, (written, size, size0)
    # NIfTI keeps its affine in float32: 1e-5 mm is well below that precision's reach at these coordinates
    np.testing.assert_allclose(spacing, spacing0, atol=1e-5)
    np.testing.assert_allclose(origin, origin0, atol=1e-5)
    np.testing.assert_allclose(direction, direction0, atol=1e-5)


def image_io(path: Path) -> str:
    """The ImageIO that SimpleITK finds able to read ``path``: its format family."""
    return sitk.ImageFileReader.GetImageIOFromFileName(str(path))


def nibabel_read(path: Path) -> tuple[np.ndarray, dict]:
    reader = NibabelReader()
    return reader.get_data(reader.read(str(path)))


def sitk_read(path: Path, **kwargs) -> tuple[np.ndarray, dict]:
    reader = SimpleITKReader(**kwargs)
    return reader.get_data(reader.read(str(path)))


@pytest.fixture(scope="module")
def converted(hippocampus_dir, tmp_path_factory) -> dict[str, dict[str, Path]]:
    """The real image and label of CASE with DIRECTION, ORIGIN and SPACING, in every format:
    ``{"image" | "label": {fmt: path}}``."""
    root = tmp_path_factory.mktemp("sitk_io")
    out: dict[str, dict[str, Path]] = {}
    for kind, folder in (("image", "imagesTr"), ("label", "labelsTr")):
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(hippocampus_dir / folder / f"{CASE}.nii.gz")))
        image = with_geometry(array)
        out[kind] = {}
        for ext in FILE_FORMATS:
            out[kind][ext] = root / f"{kind}{ext}"
            sitk.WriteImage(image, str(out[kind][ext]))
        out[kind]["dicom"] = root / f"{kind}_dicom"
        write_dicom_series(image, out[kind]["dicom"])
    return out


@pytest.mark.parametrize("case", [CASE, UINT8_CASE])
def test_reader_gives_nibabels_array_and_affine_on_the_real_nifti(hippocampus_dir, case):
    path = hippocampus_dir / "imagesTr" / f"{case}.nii.gz"
    array, meta = sitk_read(path)
    expected, expected_meta = nibabel_read(path)
    assert array.dtype == expected.dtype and array.shape == expected.shape
    np.testing.assert_array_equal(array, expected)  # same axis order (x, y, z), same voxel values
    np.testing.assert_allclose(meta["affine"], expected_meta["affine"], atol=1e-5)
    np.testing.assert_allclose(meta["original_affine"], expected_meta["original_affine"], atol=1e-5)
    np.testing.assert_array_equal(meta["spatial_shape"], expected_meta["spatial_shape"])
    assert is_no_channel(meta["original_channel_dim"]) and is_no_channel(expected_meta["original_channel_dim"])
    assert meta["space"] == "RAS" and meta["filename_or_obj"] == str(path)


@pytest.mark.parametrize("fmt", [*FILE_FORMATS, "dicom"])
def test_every_format_reads_as_nibabel_reads_the_nifti(converted, fmt):
    expected, expected_meta = nibabel_read(converted["image"][".nii.gz"])
    array, meta = sitk_read(converted["image"][fmt])
    if fmt == "dicom":  # DICOM holds int16 voxels: compare with the NIfTI cast the same way
        expected = expected.astype(np.int16)
        assert array.dtype == np.int16
    else:
        assert array.dtype == expected.dtype == np.float32
    np.testing.assert_array_equal(array, expected)
    np.testing.assert_allclose(meta["affine"], expected_meta["affine"], atol=1e-5)
    np.testing.assert_array_equal(meta["spatial_shape"], array.shape)
    # the geometry as SimpleITK read it, in ITK's LPS convention
    np.testing.assert_allclose(meta["spacing"], SPACING, atol=1e-6)
    np.testing.assert_allclose(meta["origin"], ORIGIN, atol=1e-6)
    np.testing.assert_allclose(meta["direction"], DIRECTION, atol=1e-6)
    assert not np.allclose(meta["direction"], np.diag(np.sign(np.diag(meta["direction"]))))  # really oblique


def test_load_imaged_takes_the_reader_as_a_dotted_string_as_a_bundle_config_gives_it(converted, tmp_path):
    config = {
        "load": {
            "_target_": "LoadImaged",
            "keys": "image",
            "reader": "lmttm_monai.data.SimpleITKReader",
            "ensure_channel_first": True,
        }
    }
    load = ConfigParser(config).get_parsed_content("load")
    expected, expected_meta = nibabel_read(converted["image"][".nii.gz"])
    for fmt in (".mha", "dicom"):
        image = load({"image": str(converted["image"][fmt])})["image"]
        assert tuple(image.shape) == (1, *expected.shape) and image.dtype == torch.float32
        np.testing.assert_allclose(image.affine.numpy(), expected_meta["affine"], atol=1e-5)
        assert image.meta["filename_or_obj"] == str(converted["image"][fmt])
    # NumPy, which SimpleITK cannot read, still loads: LoadImage falls back on MONAI's own readers
    np.save(tmp_path / "plain.npy", expected)
    loaded = LoadImaged(keys="image", reader="lmttm_monai.data.SimpleITKReader", ensure_channel_first=True)(
        {"image": str(tmp_path / "plain.npy")}
    )
    assert tuple(loaded["image"].shape) == (1, *expected.shape)


def test_vector_pixels_are_channel_last():
    rgb = sitk.GetImageFromArray(np.arange(4 * 5 * 6 * 3, dtype=np.uint8).reshape(6, 5, 4, 3), isVector=True)
    array, meta = SimpleITKReader().get_data(rgb)
    assert array.shape == (4, 5, 6, 3) and meta["original_channel_dim"] == -1
    np.testing.assert_array_equal(meta["spatial_shape"], (4, 5, 6))
    np.testing.assert_array_equal(array[1, 2, 3], sitk.GetArrayFromImage(rgb)[3, 2, 1])


@pytest.mark.parametrize("fmt", [*FILE_FORMATS, "dicom"])
def test_a_saved_label_map_overlays_its_input_in_the_input_format_family(converted, tmp_path, fmt):
    source = converted["label"][fmt]
    ext = output_ext_for(source)
    assert ext == (".nii.gz" if fmt == "dicom" else fmt)
    loaded = LoadImaged(keys="label", reader="lmttm_monai.data.SimpleITKReader", ensure_channel_first=True)(
        {"label": str(source)}
    )
    SaveImaged(
        keys="label", output_dir=tmp_path, output_postfix="seg", output_ext=ext, output_dtype=np.uint8,
        resample=False, separate_folder=False, print_log=False,
    )(loaded)  # fmt: skip
    written = tmp_path / f"{source.name.split('.')[0]}_seg{ext}"
    assert written.is_file(), sorted(p.name for p in tmp_path.iterdir())
    assert image_io(written) == IMAGE_IO[ext]
    assert_same_grid(written, source)
    back = sitk.ReadImage(str(written))
    assert back.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(sitk.ReadImage(
        sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(source)) if fmt == "dicom" else str(source))))  # fmt: skip


def test_writer_is_registered_once_for_metaimage_and_nrrd_and_nifti_keeps_nibabel():
    for ext in (".mha", ".mhd", ".nrrd", ".nhdr"):
        assert resolve_writer(ext)[0] is SimpleITKWriter
    assert resolve_writer(".nii.gz")[0].__name__ == "NibabelWriter"
    sitk_io._register_writer()  # what a second import would do
    assert all(SUPPORTED_WRITERS[ext].count(SimpleITKWriter) == 1 for ext in ("mha", "mhd", "nrrd", "nhdr"))


def test_writer_writes_nifti_too_and_vector_images(tmp_path):
    affine = np.array([[0, -2.0, 0, 10], [1.5, 0, 0, -4], [0, 0, 3.0, 7], [0, 0, 0, 1]])
    data = torch.arange(2 * 4 * 5 * 6, dtype=torch.float32).reshape(2, 4, 5, 6)
    writer = SimpleITKWriter(output_dtype=np.float32)
    writer.set_data_array(data, channel_dim=0)
    writer.set_metadata({"affine": affine}, resample=False)
    writer.write(tmp_path / "vec.nii.gz")
    array, meta = sitk_read(tmp_path / "vec.nii.gz")
    assert array.shape == (4, 5, 6, 2)
    np.testing.assert_array_equal(array, np.moveaxis(data.numpy(), 0, -1))
    np.testing.assert_allclose(meta["affine"], affine, atol=1e-5)


def test_output_ext_for_keeps_file_formats_and_sends_dicom_and_numpy_to_nifti(tmp_path):
    expected = {"a.nii.gz": ".nii.gz", "a.NII": ".nii", "b.mha": ".mha", "b.mhd": ".mhd", "c.nrrd": ".nrrd",
                "c.nhdr": ".nhdr", "d.npy": ".nii.gz", "e.dcm": ".nii.gz"}  # fmt: skip
    for name, ext in expected.items():
        assert output_ext_for(tmp_path / name) == ext
    assert output_ext_for(tmp_path) == ".nii.gz" and output_ext_for([str(tmp_path / "x.mha")]) == ".mha"
    with pytest.raises(ValueError, match="output_ext"):
        SaveLikeInputd(keys="pred", output_ext=".mha")


def test_truncated_file_is_a_one_line_error_naming_it(converted, tmp_path):
    whole = converted["image"][".mha"].read_bytes()
    broken = tmp_path / "broken.mha"
    broken.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match=r"broken\.mha: SimpleITK cannot read it: ") as info:
        sitk_read(broken)
    assert "\n" not in str(info.value)
    with pytest.raises(FileNotFoundError, match=r"missing\.mha"):
        sitk_read(tmp_path / "missing.mha")


def test_folder_without_dicom_is_a_one_line_error_naming_it(tmp_path):
    (tmp_path / "notes.txt").write_text("not DICOM")
    with pytest.raises(ValueError, match=f"{tmp_path}: no DICOM series") as info:
        sitk_read(tmp_path)
    assert "\n" not in str(info.value)


def test_folder_with_two_series_names_both_unless_one_is_chosen(converted, tmp_path):
    image = sitk.ReadImage(str(converted["image"][".mha"]))[:, :, :4]  # four slices are enough here
    write_dicom_series(image, tmp_path, series_uid="1.2.3.1")
    write_dicom_series(image, tmp_path, series_uid="1.2.3.2")
    with pytest.raises(ValueError, match=rf"{tmp_path}: holds 2 DICOM series \(1\.2\.3\.1, 1\.2\.3\.2\)") as info:
        sitk_read(tmp_path)
    assert "\n" not in str(info.value)
    array, _ = sitk_read(tmp_path, series_id="1.2.3.2")
    assert array.shape == (*image.GetSize()[:2], 4)
    with pytest.raises(ValueError, match=r"no DICOM series '9\.9' here; it holds 1\.2\.3\.1, 1\.2\.3\.2"):
        sitk_read(tmp_path, series_id="9.9")


def test_inference_folder_lists_every_format_and_skips_bad_ones_by_name(converted, tmp_path, caplog):
    for fmt in (".mha", ".nrrd"):
        shutil.copy(converted["image"][fmt], tmp_path / f"case{fmt}")
    shutil.copytree(converted["image"]["dicom"], tmp_path / "case_dicom")
    (tmp_path / "broken.mha").write_bytes(converted["image"][".mha"].read_bytes()[:300])
    (tmp_path / "not_dicom").mkdir()  # a folder without DICOM is ignored, like a file of another type
    two = tmp_path / "two_series"
    small = sitk.ReadImage(str(converted["image"][".mha"]))[:, :, :3]
    write_dicom_series(small, two, series_uid="1.2.3.1")
    write_dicom_series(small, two, series_uid="1.2.3.2")
    with caplog.at_level(logging.WARNING):
        items = image_datalist(tmp_path, spatial_dims=3)
    assert [Path(i["image"]).name for i in items] == ["case.mha", "case.nrrd", "case_dicom"]
    assert "broken.mha: SimpleITK cannot read it" in caplog.text and "two_series: holds 2 DICOM series" in caplog.text
    assert "not_dicom" not in caplog.text


@pytest.mark.slow
def test_mam_swinunetr_predicts_the_same_from_every_format_and_writes_it_in_the_input_space(converted, tmp_path):
    """One inference run over the same int16 volume as NIfTI, MetaImage, NRRD and DICOM, through the bundle's own
    inference.json (SimpleITKReader in, SaveLikeInputd out)."""
    root = tmp_path / "mam_swinunetr"
    shutil.copytree(REPO_ROOT / "bundles" / "mam_swinunetr", root)
    config = str(root / "configs" / "inference.json")
    parser = ConfigParser()
    parser.read_config(config)
    assert parser["load_transforms"][0]["reader"] == "lmttm_monai.data.SimpleITKReader"
    assert parser["postprocessing"]["transforms"][3]["_target_"] == "lmttm_monai.data.SaveLikeInputd"
    torch.manual_seed(0)
    (root / "models").mkdir(exist_ok=True)
    torch.save(parser.get_parsed_content("network_def").state_dict(), root / "models" / "model.pt")

    # int16 voxels in every file, as DICOM stores them, so all four inputs hold the same numbers; cropped to one
    # sliding window (roi_size 32x64x32) to keep the run short: the grid still starts at the same oblique origin
    volume = sitk.Cast(sitk.ReadImage(str(converted["image"][".mha"])), sitk.sitkInt16)[:32, :48, :32]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    sources = {}
    for ext in (".nii.gz", ".mha", ".nrrd"):
        sources[ext] = inputs / f"case_{ext.split('.')[1]}{ext}"
        sitk.WriteImage(volume, str(sources[ext]))
    sources["dicom"] = inputs / "case_dicom"
    write_dicom_series(volume, sources["dicom"])

    out = tmp_path / "out"
    bundle(
        "run", "--config_file", config, "--bundle_root", str(root), "--input_dir", str(inputs),
        "--output_dir", str(out), "--num_workers", "0",
    )  # fmt: skip
    predictions = []
    for fmt, source in sources.items():
        ext = output_ext_for(source)
        written = out / f"{source.name.split('.')[0]}_seg{ext}"
        assert written.is_file(), sorted(p.name for p in out.iterdir())
        assert image_io(written) == IMAGE_IO[ext] == IMAGE_IO[".nii.gz" if fmt == "dicom" else fmt]
        assert_same_grid(written, source)
        predictions.append(sitk.GetArrayFromImage(sitk.ReadImage(str(written))))
    assert set(np.unique(predictions[0])) <= {0, 1, 2}
    for other in predictions[1:]:
        np.testing.assert_array_equal(other, predictions[0])


@pytest.mark.slow
def test_training_reads_the_hippocampus_without_simpleitk_imported_only_on_first_use(hippocampus_dir, tmp_path):
    # a machine without SimpleITK (the GPU image of .ci/device-run.sh): an import of it fails there as it does here
    (tmp_path / "SimpleITK").mkdir()
    (tmp_path / "SimpleITK" / "__init__.py").write_text("raise ImportError('SimpleITK is not installed here')\n")
    script = f"""
from monai.bundle import ConfigParser
import lmttm_monai.data, lmttm_monai.experiments.results
parser = ConfigParser()
parser.read_config({str(REPO_ROOT / "bundles" / "mam_swinunetr" / "configs" / "train.json")!r})
parser["dataset_dir"] = {str(hippocampus_dir)!r}
item = parser.get_parsed_content("train#preprocessing")(parser.get_parsed_content("train#dataset#data")[0])
print("image", tuple(item[0]["image"].shape) if isinstance(item, list) else tuple(item["image"].shape))
try:
    import SimpleITK
except ImportError as e:
    print("no SimpleITK:", e)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO_ROOT)])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "no SimpleITK: SimpleITK is not installed here" in done.stdout
    assert "image (1, 32, 64, 32)" in done.stdout  # one crop of roi_size, read by nibabel
