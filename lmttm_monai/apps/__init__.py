"""Applications built on the package: a MONAI Label app (``lmttm_monai.apps.monailabel``)."""
