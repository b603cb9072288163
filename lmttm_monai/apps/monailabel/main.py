"""The MONAI Label app of lmttm-monai: this project's bundles, from local folders, for 3D Slicer and OHIF.

MONAI Label loads this file (``monailabel start_server --app <this folder>``) and builds the one
``MONAILabelApp`` subclass it finds. ``--conf`` keys:

- ``models``: ``all`` (default) or bundle names separated by commas (``lmttm,mam_swinunetr``);
- ``bundles_dir``: the folder holding the bundles (default: the checkout's ``bundles/``);
- ``skip_trainers``: ``true`` serves inference only;
- ``preload``: ``true`` loads each network at start-up instead of at its first request.

Nothing is downloaded: MONAI Label's own bundle app asks the model zoo first, which fails offline and keeps only
the zoo's names. Run ``python -m lmttm_monai.apps.monailabel`` for the start command.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.utils.others.generic import strtobool

import lmttm_monai
from lmttm_monai.apps.monailabel import check_studies
from lmttm_monai.apps.monailabel.bundles import default_bundles_dir, select_bundles
from lmttm_monai.apps.monailabel.tasks import (
    IMAGE_NAME_KEY,
    BadInputError,
    CheckedLocalDatastore,
    SegmentationBundleTrainTask,
    infer_task,
)

logger = logging.getLogger(__name__)


def _is_upload(path: str) -> bool:
    # MONAI Label's infer endpoint writes an uploaded file to tempfile.NamedTemporaryFile(suffix=...).name
    return os.path.dirname(os.path.realpath(path)) == os.path.realpath(tempfile.gettempdir())


class LmttmMonaiLabelApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        conf = dict(conf or {})
        self.bundles_dir = os.path.realpath(conf.get("bundles_dir") or default_bundles_dir())
        try:
            self.bundles = select_bundles(self.bundles_dir, conf.get("models", "all"))
        except (ValueError, FileNotFoundError) as error:
            raise MONAILabelException(MONAILabelError.APP_INIT_ERROR, str(error)) from error

        logger.info(f"lmttm-monai {lmttm_monai.__version__}: bundles from {self.bundles_dir}")
        for bundle in self.bundles:
            logger.info(f"bundle {bundle.describe()}")
            if bundle.weights is None:
                # MONAI Label's bundle task would drop it with a warning among many; say what it means and the fix
                logger.warning(
                    f"bundle {bundle.name} is NOT served for inference: {bundle.path / 'models' / 'model.pt'} does "
                    f"not exist. Put trained weights there"
                    + (" or train it here (POST /train/" + bundle.name + ")" if bundle.trainable else "")
                    + ", then restart the server."
                )
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="lmttm-monai",
            description="Memory-based networks of lmttm-monai (LMTTM, Memory-Attention, SALSTM) as MONAI bundles",
            version=lmttm_monai.__version__,
        )

    def init_datastore(self):
        if self.studies.startswith(("http://", "https://")):
            return super().init_datastore()
        try:
            check_studies(self.studies)  # a Decathlon folder or one without images would serve nothing, silently
        except ValueError as error:
            raise MONAILabelException(MONAILabelError.APP_INIT_ERROR, str(error)) from error
        # the settings MONAI Label's own folder datastore is built with, plus label checks (tasks.py)
        from monailabel.config import settings

        return CheckedLocalDatastore(
            self.studies,
            extensions=settings.MONAI_LABEL_DATASTORE_FILE_EXT,
            auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
            read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY,
        )

    def init_infers(self):
        return {b.name: infer_task(b, self.conf) for b in self.bundles if b.weights is not None}

    def init_trainers(self):
        if strtobool(self.conf.get("skip_trainers", "false")):
            return {}
        return {b.name: SegmentationBundleTrainTask(b, self.conf) for b in self.bundles if b.trainable}

    def info(self):
        meta = super().info()
        # what was asked for and why a bundle is missing from "models", for a client or a person reading /info/
        meta["bundles"] = {
            b.name: {
                "path": str(b.path),
                "type": b.kind,
                "weights": str(b.weights) if b.weights else None,
                "infer": b.name in self._infers,
                "train": b.name in self._trainers,
            }
            for b in self.bundles
        }
        return meta

    def _unknown_model(self, model: Any, task: str, served: dict) -> HTTPException:
        known = ", ".join(served) or "none"
        without = [b.name for b in self.bundles if b.name == model and b.weights is None]
        reason = f"bundle {model!r} has no weights (models/model.pt)" if without else f"no model {model!r}"
        return HTTPException(status_code=404, detail=f"{reason} for {task}; served: {known}")

    def infer(self, request, datastore=None):
        model = request.get("model")
        if model not in self._infers:
            raise self._unknown_model(model, "inference", self._infers)
        image = request.get("image")
        if isinstance(image, str) and not os.path.exists(image):
            if not (datastore or self.datastore()).get_image_uri(image):
                raise HTTPException(status_code=404, detail=f"no image {image!r} in the datastore")
            request = {**request, IMAGE_NAME_KEY: f"image {image!r}"}
        elif isinstance(image, str):
            # an upload (MONAI Label saved it to a temporary file) or a path on the server
            request = {**request, IMAGE_NAME_KEY: "the uploaded image" if _is_upload(image) else image}
        try:
            return super().infer(request, datastore)
        except BadInputError as error:
            raise HTTPException(status_code=422, detail=str(error)) from error

    def bundle_path(self, model):
        # MONAI Label asks this before it starts a background task (train, batch inference) for `model`: an unknown
        # name would otherwise start a process that fails out of sight, and answer 200
        if model and model not in self._trainers and model not in self._infers:
            raise self._unknown_model(model, "training", self._trainers)
        return super().bundle_path(model)
