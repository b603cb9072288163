"""lmttm_monai.bundle.zoo: model-zoo's CI checks, offline, on the repository's four bundles and on broken copies of them.

The repository holds no weights, so the checks that need ``models/model.pt`` run on copies whose weights are the
state dict of a freshly built ``network_def`` (as model-zoo's ``_produce_fake_weights`` makes them).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

import lmttm_monai
from conftest import REPO_ROOT, SCHEMA, require_path
from lmttm_monai.bundle import zoo
from lmttm_monai.bundle.zoo import BundleCheckError

BUNDLES = REPO_ROOT / "bundles"
NAMES = ("lmttm", "mam_swinunetr", "mam_unetr", "salstm")
# the summaries of verify_bundle start with the check's name, in model-zoo's order (package pin and weights added)
ORDER = ("bundle directory", "version", "metadata format", "required packages", "data shape", "weights", "torchscript")


class Unregistered:
    """A class torch.load(weights_only=True) does not know: a checkpoint holding one needs pickle code."""


def copy_bundle(name: str, dest: Path) -> Path:
    """The repository's bundle ``name`` copied to ``dest/name`` (the folder name is the bundle name the checks see),
    without run outputs."""
    ignore = shutil.ignore_patterns("eval", "models", "__pycache__")
    return Path(shutil.copytree(BUNDLES / name, dest / name, ignore=ignore))


def build_network(bundle: Path, *overlays: str) -> torch.nn.Module:
    """``network_def`` of the bundle's inference config, merged with ``overlays`` (file names in its configs/)."""
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / f) for f in ("inference.json", *overlays)])
    parser["bundle_root"] = str(bundle)
    return parser.get_parsed_content("network_def")


def save_weights(bundle: Path, checkpoint: object) -> Path:
    path = bundle / "models" / "model.pt"
    path.parent.mkdir(exist_ok=True)
    torch.save(checkpoint, path)
    return path


def edit_json(path: Path, edit) -> None:
    content = json.loads(path.read_text())
    edit(content)
    path.write_text(json.dumps(content, indent=4))


def refused(check, *args, naming: Path, match: str) -> str:
    """``check(*args)`` raises a one-line BundleCheckError that names ``naming`` and matches ``match``."""
    with pytest.raises(BundleCheckError) as info:
        check(*args)
    message = str(info.value)
    assert "\n" not in message, message
    assert str(naming) in message, message
    assert re.search(match, message), message
    return message


@pytest.fixture
def lmttm(tmp_path) -> Path:
    """A copy of bundles/lmttm with the weights of a fresh LMTTM."""
    bundle = copy_bundle("lmttm", tmp_path)
    save_weights(bundle, build_network(bundle).state_dict())
    return bundle


def test_every_bundle_is_checked_here():
    assert sorted(p.name for p in BUNDLES.iterdir() if (p / "configs").is_dir()) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_repository_bundle_has_the_required_files_apart_from_the_weights(name):
    assert "LICENSE" in zoo.verify_bundle_directory(BUNDLES / name, require_weights=False)


@pytest.mark.parametrize("name", NAMES)
def test_repository_bundle_version_has_a_changelog_entry(name):
    version = json.loads((BUNDLES / name / "configs" / "metadata.json").read_text())["version"]
    assert version in zoo.verify_version_changes(BUNDLES / name)


@pytest.mark.parametrize("name", NAMES)
def test_repository_bundle_metadata_validates_against_the_shared_schema_offline(name, monkeypatch):
    monkeypatch.setenv(zoo.SCHEMA_ENV, str(require_path(SCHEMA)))
    summary = zoo.verify_metadata_format(BUNDLES / name)
    assert str(SCHEMA) in summary and "downloaded" not in summary


@pytest.mark.parametrize("name", NAMES)
def test_repository_bundle_pins_the_installed_lmttm_monai(name):
    assert lmttm_monai.__version__ in zoo.verify_required_packages(BUNDLES / name)


@pytest.mark.parametrize("name", NAMES)
def test_repository_bundle_network_maps_the_metadata_input_to_the_metadata_output(name):
    zoo.verify_data_shape(BUNDLES / name)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_fresh_network_weights_load_strictly_and_export_to_torchscript(name, tmp_path):
    bundle = copy_bundle(name, tmp_path)
    save_weights(bundle, build_network(bundle).state_dict())
    zoo.verify_weights(bundle)
    summary = zoo.verify_torchscript(bundle)
    # MONAI's SwinUNETR cannot be scripted: that bundle is traced, on the metadata's input shape
    assert ("traced" in summary) == (name == "mam_swinunetr"), summary


def test_verify_bundle_runs_the_checks_in_model_zoo_order(lmttm):
    passed = []
    assert zoo.verify_bundle(lmttm, on_pass=passed.append) == passed
    assert [line.split(":")[0] for line in passed] == list(ORDER)
    without_weights = zoo.verify_bundle(lmttm, require_weights=False)
    assert [line.split(":")[0] for line in without_weights] == list(ORDER[:5])


def test_missing_metadata_is_refused_naming_the_file(lmttm):
    meta_file = lmttm / "configs" / "metadata.json"
    meta_file.unlink()
    refused(zoo.verify_bundle_directory, lmttm, naming=meta_file, match="is missing")
    refused(zoo.verify_bundle, lmttm, naming=meta_file, match="is missing")


def test_missing_weights_ask_to_train_the_bundle_or_download_the_release(lmttm):
    weights = lmttm / "models" / "model.pt"
    weights.unlink()
    refused(zoo.verify_bundle_directory, lmttm, naming=weights, match="train the bundle or download the release")
    assert "models/model.pt" not in zoo.verify_bundle_directory(lmttm, require_weights=False)


def test_version_without_a_changelog_entry_is_refused(lmttm):
    meta_file = lmttm / "configs" / "metadata.json"
    edit_json(meta_file, lambda meta: meta.update(version="9.9.9"))
    refused(zoo.verify_version_changes, lmttm, naming=meta_file, match="version 9.9.9 has no changelog entry")


def test_required_package_pin_that_differs_from_the_package_is_refused(lmttm):
    meta_file = lmttm / "configs" / "metadata.json"
    edit_json(meta_file, lambda meta: meta["required_packages_version"].update({"lmttm-monai": "0.0.1"}))
    message = refused(zoo.verify_required_packages, lmttm, naming=meta_file, match="pins lmttm-monai 0.0.1")
    assert f"set the pin to {lmttm_monai.__version__}" in message


def test_schema_named_by_the_environment_variable_is_used(lmttm, tmp_path, monkeypatch):
    schema = tmp_path / "schema.json"
    shutil.copyfile(require_path(SCHEMA), schema)
    monkeypatch.setenv(zoo.SCHEMA_ENV, str(schema))
    assert str(schema) in zoo.verify_metadata_format(lmttm)
    monkeypatch.setenv(zoo.SCHEMA_ENV, str(tmp_path / "absent.json"))
    refused(zoo.verify_metadata_format, lmttm, naming=lmttm / "configs" / "metadata.json", match="absent.json")


def test_metadata_that_breaks_the_schema_is_refused_on_one_line(lmttm):
    meta_file = lmttm / "configs" / "metadata.json"
    require_path(SCHEMA)
    edit_json(meta_file, lambda meta: meta.pop("authors"))
    refused(zoo.verify_metadata_format, lmttm, naming=meta_file, match="does not match the schema.*authors")


@pytest.mark.parametrize(
    ("other", "match"),
    [("ttm", r"memory\.initial has shape \(128, 128\)"), ("linear", "missing keys .*unexpected keys weight, bias")],
)
def test_weights_of_another_network_are_refused(lmttm, other, match):
    # ttm.json overlays network_def with TTM, LMTTM's predecessor: same key names, other shapes
    net = build_network(lmttm, "ttm.json") if other == "ttm" else torch.nn.Linear(2, 2)
    weights = save_weights(lmttm, net.state_dict())
    refused(zoo.verify_weights, lmttm, naming=weights, match=f"from another network\\?.*{match}")


@pytest.mark.parametrize("kind", ["whole module", "unregistered class"])
def test_weights_that_need_pickle_code_are_refused_with_how_to_resave_them(lmttm, kind):
    checkpoint = build_network(lmttm) if kind == "whole module" else {"model": Unregistered()}
    weights = save_weights(lmttm, checkpoint)
    message = refused(zoo.verify_weights, lmttm, naming=weights, match="needs pickle code")
    assert "torch.save(net.state_dict()" in message
    assert ("LMTTM" if kind == "whole module" else "Unregistered") in message


def test_damaged_weights_file_is_refused_as_unreadable(lmttm):
    weights = lmttm / "models" / "model.pt"
    weights.write_bytes(weights.read_bytes()[:1000])
    refused(zoo.verify_weights, lmttm, naming=weights, match="not a readable PyTorch file")


def test_state_dict_nested_under_model_passes_like_a_bare_one(lmttm):
    save_weights(lmttm, {"model": build_network(lmttm).state_dict(), "epoch": 3})
    zoo.verify_weights(lmttm)
    zoo.verify_torchscript(lmttm)


def test_monai_errors_become_one_line_keeping_the_root_cause(lmttm):
    config = lmttm / "configs" / "inference.json"
    edit_json(config, lambda c: c["network_def"].update(dim=100))
    # MONAI wraps it in "Failed to instantiate component ..." with a long list of arguments; the cause is the news
    message = refused(zoo.verify_data_shape, lmttm, naming=config, match=r"dim \(100\) must be divisible by num_heads")
    assert "Failed to instantiate" not in message


def test_input_shape_takes_n_style_entries_at_n_1_and_refuses_code():
    image = {"num_channels": 3, "spatial_shape": ["16*n", "2**p", 28, "*"]}
    assert zoo.input_shape({"network_data_format": {"inputs": {"image": image}}}) == [1, 3, 16, 2, 28, 1]
    image["spatial_shape"] = ["__import__('os').getcwd()"]
    with pytest.raises(ValueError, match="unsupported spatial_shape entry"):
        zoo.input_shape({"network_data_format": {"inputs": {"image": image}}})
