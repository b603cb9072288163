"""The project's bundle tooling: the ``lmttm-monai`` command (:mod:`.cli`), model-zoo's checks (:mod:`.zoo`),
release packaging (:mod:`.release`) and shipping a trained model (:mod:`.ship`). Imports the library, never the
reverse."""
