"""Names of the personalization methods, torch-free (the command line builds its choices from them).

The implementations are in :mod:`imutune.personalize.baselines` (``METHODS``) and
:mod:`imutune.personalize.finetune`; both spellings, ``filterloss_cv`` and ``filterloss-cv``, are accepted.
"""
from __future__ import annotations

__all__ = ["METHOD_NAMES", "NATIVE_LOSSES", "DEFAULT_LOSS", "canonical_loss"]

#: Every name ``FinetuneConfig.loss`` and ``imutune finetune --loss`` accept, in dash form. ``oracle`` is an
#: upper bound (it needs the injected label-noise truth), not a method.
METHOD_NAMES: tuple[str, ...] = ("filterloss", "filterloss-cv", "filterloss-learned", "filterloss-soft", "ce",
                                 "none", "oversample", "undersample", "class-weighted", "class-balanced", "focal", "gce", "sce",
                                 "cleanlab", "oracle")
#: The losses :func:`imutune.personalize.finetune.finetune` itself runs (with rehearsal, checkpoints and given
#: sample weights); the other names are baselines run by :func:`imutune.personalize.baselines.run_method`.
NATIVE_LOSSES: tuple[str, ...] = ("filterloss", "filterloss-cv", "filterloss-learned", "filterloss-soft", "ce")
#: The default of ``FinetuneConfig.loss`` (and so of ``imutune finetune --loss`` and the demo): FilterLoss-soft,
#: the best method of ``imutune bench filterloss`` under every label noise there (README, "Personalization").
DEFAULT_LOSS = "filterloss-soft"


def canonical_loss(name: str) -> str:
    """``"filterloss_cv"`` -> ``"filterloss-cv"``: method names with dashes (the CLI's spelling)."""
    return str(name).replace("_", "-")
