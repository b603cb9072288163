#!/usr/bin/env bash
# Builds the MONAI Label server environment for this project in its own virtual environment (path: $1).
#
# Why a separate environment: monailabel 0.8.5 imports torchvision when it serves a bundle
# (monailabel.transform.post), and torchvision's only Linux builds on PyPI are CUDA builds that fail to import
# next to the CPU-only torch 2.13 the project's own environment uses ("operator torchvision::nms does not exist").
# A CUDA torch with its own torchvision imports and runs on a machine without a GPU (CPU tensors), so the server
# gets that pair here: torch 2.14.1 + torchvision 0.29.1, which work on CPU-only and CUDA machines alike.
#
# Why monailabel --no-deps: its dependencies build sam2 from source (only the SAM2 sample apps use it) and pull
# the whole itk meta-package (1.5 GB; only itk-io is imported). The modules the server imports need the pins of
# the project's [label] extra (pyproject.toml), which are the versions monailabel 0.8.5 was released with.
#
# Idempotent: a second run on the same path only checks what is installed. Prints the elapsed time.
set -euo pipefail

venv=${1:?usage: .ci/label-install.sh VENV_PATH}
repo=$(cd "$(dirname "$0")/.." && pwd)
start=$SECONDS

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
py="$venv/bin/python"

# One resolve for everything, so that the pins of [label] (numpy < 2 through pydicom-seg) shape the rest.
"$py" -m pip install -q torch==2.14.1 torchvision==0.29.1 -e "$repo[label,medmnist]"
"$py" -m pip install -q --no-deps monailabel==0.8.5

# Fail here, not in the first request: every module the server loads for this project's app must import,
# torchvision with its compiled operators included.
"$py" - <<'PY'
import torch
import torchvision
from torchvision.ops import nms

import monailabel.app  # noqa: F401  (the FastAPI app: endpoints, datastores, tasks)
import monailabel.tasks.infer.bundle  # noqa: F401
import monailabel.tasks.train.bundle  # noqa: F401
import lmttm_monai.apps.monailabel.tasks  # noqa: F401

boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.1]])
assert nms(boxes, torch.tensor([1.0, 0.9]), 0.5).tolist() == [0]
print(f"label environment: torch {torch.__version__}, torchvision {torchvision.__version__}, "
      f"cuda available: {torch.cuda.is_available()}")
PY

echo "label-install: $venv ready in $((SECONDS - start)) s ($(du -sh "$venv" | cut -f1))"
