"""The project's experiments: training and tabulating the comparisons behind the model cards (:mod:`.results`,
:mod:`.figures`) and the speed benchmarks (:mod:`.bench`, :mod:`.mam_cost`, :mod:`.salstm_cost`)."""
