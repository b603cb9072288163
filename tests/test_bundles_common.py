"""Checks every bundle of the project must pass, as model-zoo's CI runs them: metadata, network in/out, config
consistency between training and inference, and a changelog entry for the current version."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
from monai.bundle import ConfigParser, verify_metadata, verify_net_in_out

from conftest import REPO_ROOT, SCHEMA, require_path

BUNDLES = REPO_ROOT / "bundles"
# bundle -> the overlays that change its network (each must still fit the metadata's input and output)
NETWORK_OVERLAYS = {
    "lmttm": ["ttm.json", "ttm_scenic.json", "resnet18.json", "densenet121.json"],
    "mam_swinunetr": ["swinunetr.json", "sts.json"],
    "mam_unetr": ["unetr.json"],
    "salstm": ["lstmsa.json", "unet.json", "unet_context.json"],
}
# keys that training and inference must agree on, where the bundle has them
# overlays that also set the input size: the metadata's spatial_shape is the default network's, so
# verify_net_in_out is given the overlay's own (MONAI's DenseNet-121 pools 28^3 down to nothing)
OVERLAY_INPUT_SHAPE = {"densenet121.json": [64, 64, 64]}
SHARED_KEYS = ("bundle_root", "ckpt_dir", "output_dir", "dataset_dir", "dataset_name", "image_size", "num_classes",
               "roi_size", "split_ratios", "split_seed", "val_cases")  # fmt: skip


# the top-level keys the README promises in every bundle (model-zoo's names), and those each kind of bundle adds
TRAIN_KEYS = {"bundle_root", "dataset_dir", "epochs", "epoch_length", "val_interval", "batch_size", "learning_rate",
              "num_workers", "seed", "device", "amp", "output_dir", "ckpt_dir", "overwrite", "resume", "outputs",
              "network_def", "network", "train", "validate", "initialize", "run"}  # fmt: skip
INFERENCE_KEYS = {"bundle_root", "dataset_dir", "batch_size", "num_workers", "seed", "device", "amp", "output_dir",
                  "ckpt_dir", "overwrite", "outputs", "input_dir", "datalist", "network_def", "network", "initialize",
                  "run"}  # fmt: skip
SEGMENTATION_KEYS = {"max_cases", "num_classes"}
LMTTM_KEYS = {"dataset_name", "image_size"}


@pytest.mark.parametrize("name", sorted(NETWORK_OVERLAYS))
def test_every_bundle_has_the_same_top_level_keys_in_train_and_inference(name):
    extra = LMTTM_KEYS if name == "lmttm" else SEGMENTATION_KEYS
    train = json.loads((BUNDLES / name / "configs" / "train.json").read_text())
    inference = json.loads((BUNDLES / name / "configs" / "inference.json").read_text())
    assert TRAIN_KEYS | extra <= set(train), sorted((TRAIN_KEYS | extra) - set(train))
    assert INFERENCE_KEYS | extra <= set(inference), sorted((INFERENCE_KEYS | extra) - set(inference))
    if name != "lmttm":
        assert {"num_samples", "cache_rate"} <= set(train)
    for key in ("overwrite", "resume"):
        assert train[key] is False  # nothing replaced, nothing resumed, unless asked
    assert train["dataset_dir"] == inference["dataset_dir"] and "default_dataset_dir(" in train["dataset_dir"]


def test_every_bundle_is_listed_here():
    assert sorted(p.name for p in BUNDLES.iterdir() if (p / "configs").is_dir()) == sorted(NETWORK_OVERLAYS)


@pytest.mark.parametrize("name", sorted(NETWORK_OVERLAYS))
def test_metadata_passes_verify_metadata_and_has_a_changelog_entry_for_its_version(name):
    require_path(SCHEMA)
    meta_file = BUNDLES / name / "configs" / "metadata.json"
    verify_metadata(meta_file=str(meta_file), filepath=str(SCHEMA))  # in this process: raises on a mismatch
    meta = json.loads(meta_file.read_text())
    assert meta["version"] in meta["changelog"]
    for path in ("LICENSE", "docs/README.md", "docs/data_license.txt", "configs/logging.conf"):
        assert (BUNDLES / name / path).is_file(), path


@pytest.mark.parametrize(
    ("name", "overlay"), [(n, o) for n, overlays in sorted(NETWORK_OVERLAYS.items()) for o in [None, *overlays]]
)
def test_network_passes_verify_net_in_out(name, overlay):
    configs = BUNDLES / name / "configs"
    files = [str(configs / "inference.json")] + ([str(configs / overlay)] if overlay else [])
    shape = {"_meta_#network_data_format#inputs#image#spatial_shape": OVERLAY_INPUT_SHAPE[overlay]} \
        if overlay in OVERLAY_INPUT_SHAPE else {}  # fmt: skip
    # MONAI's own check, in this process (python -m monai.bundle verify_net_in_out calls the same function)
    verify_net_in_out("network_def", meta_file=str(configs / "metadata.json"), config_file=files, n=2, **shape)
    if overlay in OVERLAY_INPUT_SHAPE:  # the overlay trains and infers at the size it was verified at
        parser = ConfigParser()
        parser.read_config(files)
        assert [parser["image_size"]] * 3 == OVERLAY_INPUT_SHAPE[overlay]


@pytest.mark.parametrize("name", sorted(NETWORK_OVERLAYS))
def test_inference_and_training_build_the_same_network_from_the_same_settings(name):
    configs = BUNDLES / name / "configs"
    train, infer = ConfigParser(), ConfigParser()
    train.read_config(str(configs / "train.json"))
    infer.read_config(str(configs / "inference.json"))
    assert train["network_def"] == infer["network_def"]
    for key in SHARED_KEYS:
        if key in train.config or key in infer.config:
            assert train[key] == infer[key], key


def bundle_files() -> list[str]:
    """Every file under bundles/ that git tracks or would add (weights and outputs are ignored), repo-relative."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "bundles"],
                            cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    return sorted(f for f in listed if (REPO_ROOT / f).is_file())


def test_bundle_files_pass_model_zoos_pre_commit_hooks(tmp_path, monkeypatch, capsys):
    # model-zoo's .pre-commit-config.yaml (pre-commit-hooks 4.6.0), called through the hooks' own entry points.
    # The fixers rewrite what they would change, so they run on a copy; the checkers read the repository itself.
    from pre_commit_hooks import (
        check_added_large_files, check_case_conflict, check_executables_have_shebangs, check_toml, check_yaml,
        detect_private_key, end_of_file_fixer, mixed_line_ending, pretty_format_json, trailing_whitespace_fixer,
    )  # fmt: skip

    # pre-commit hands its hooks text files only (`types: [text]`): the shipped models/model.pt are binary, and
    # their own limits (fp32 state dict, under 30 MB) are pinned by tests/test_shipped_models.py
    files = [f for f in bundle_files() if not f.endswith((".pt", ".ts"))]
    assert "bundles/lmttm/configs/train.json" in files
    for f in files:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / f, tmp_path / f)
    json_files = [f for f in files if f.endswith(".json")]
    yaml_files = [f for f in files if f.endswith((".yml", ".yaml"))]
    fixers = {
        "end-of-file-fixer": (end_of_file_fixer.main, files),
        "trailing-whitespace": (trailing_whitespace_fixer.main, files),
        "pretty-format-json": (
            pretty_format_json.main, ["--autofix", "--no-sort-keys", "--indent=4", *json_files]
        ),
        "mixed-line-ending": (mixed_line_ending.main, files),
    }
    checkers = {
        "check-yaml": (check_yaml.main, yaml_files),
        "check-toml": (check_toml.main, [f for f in files if f.endswith(".toml")]),
        "check-case-conflict": (check_case_conflict.main, files),
        # pre-commit hands this hook only the files with an executable bit (its `types: [text, executable]`)
        "check-executables-have-shebangs": (
            check_executables_have_shebangs.main, [f for f in files if os.access(REPO_ROOT / f, os.X_OK)]
        ),
        "check-added-large-files": (check_added_large_files.main, ["--maxkb=1024", "--enforce-all", *files]),
        "detect-private-key": (detect_private_key.main, files),
    }
    failed = {}
    for hooks, cwd in ((fixers, tmp_path), (checkers, REPO_ROOT)):
        monkeypatch.chdir(cwd)
        for hook, (main, args) in hooks.items():
            if main(args) != 0:
                failed[hook] = capsys.readouterr().out.strip()
    assert failed == {}, "fix with: pre-commit run --all-files (model-zoo's hooks), or the hooks named here"


@pytest.mark.parametrize("name", sorted(NETWORK_OVERLAYS))
def test_bundle_pins_the_installed_package_version_which_lives_in_one_place(name):
    # lmttm_monai.__version__ is the one place; pyproject.toml reads it (dynamic version), so the installed
    # distribution and every bundle's pin must follow it. Bump it there, then the pins (model-zoo's
    # get_bundle_requirements.py installs exactly the pinned version).
    from importlib.metadata import version

    import lmttm_monai

    meta = json.loads((BUNDLES / name / "configs" / "metadata.json").read_text())
    assert version("lmttm-monai") == lmttm_monai.__version__, "reinstall: pip install -e ."
    assert meta["required_packages_version"]["lmttm-monai"] == lmttm_monai.__version__


@pytest.mark.parametrize("name", sorted(NETWORK_OVERLAYS))
def test_multi_gpu_overlay_keeps_logging_handlers_to_the_main_process_by_name(name):
    """Ranks > 0 (``main_process`` false) drop the handlers that log or write event files, whatever their place in
    the list, and keep those every rank must run: validation, a learning-rate schedule, the training checkpoint."""
    configs = BUNDLES / name / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "train.json"), str(configs / "multi_gpu_train.json")])
    overlay = json.loads((configs / "multi_gpu_train.json").read_text())
    assert not [k for k in overlay if re.search(r"#\d+(#|$)", k)], "the overlay addresses a list item by position"
    logging_only = {"StatsHandler", "TensorBoardStatsHandler", "ignite.handlers.ProgressBar"}
    for main_process in (True, False):
        parser["main_process"] = main_process
        for section in ("train", "validate"):
            for i, handler in enumerate(parser[f"{section}#handlers"]):
                disabled = "_disabled_" in handler and parser.get_parsed_content(f"{section}#handlers#{i}#_disabled_")
                assert bool(disabled) == (not main_process and handler["_target_"] in logging_only), (section, handler)
    assert parser["validate#evaluator#val_handlers"].replace("::", "#") == "$@validate#handlers if @main_process else None"
    assert parser["train#dataloader#sampler"].replace("::", "#") == "@train#sampler"
