"""imutune: on-device personalization of IMU sensor models.

Stages, one module each: :mod:`~imutune.recordings`, :mod:`~imutune.windows`,
:mod:`~imutune.quality`, :mod:`~imutune.models`, :mod:`~imutune.losses`,
:mod:`~imutune.finetune`, :mod:`~imutune.export`, :mod:`~imutune.backends`,
:mod:`~imutune.runtime`, :mod:`~imutune.metrics`, :mod:`~imutune.cli`.
"""
__version__ = "0.1.0"
