"""The one-hidden-layer attack (Jagielski et al. 2020, §6), one module per phase; run through
:class:`~model_extraction.attacks.functional.FunctionalExtraction`."""
