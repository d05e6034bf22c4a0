"""FoMo-in-Flux recipes for continual multimodal pretraining (Roth et al. 2024) on a built
benchmark: concept streams and their orderings (``streams``), pool / current / replay data
mixtures (``mixture``), memory-adjusted FLOPs budgets (``maf``) and the recipe runner
(``runner``; ``python -m training fomo``). Update and merge methods are ordinary
``training.methods`` files; merge operators live in ``training.merging``, LR schedules and
meta-schedules in ``training.schedules``."""
