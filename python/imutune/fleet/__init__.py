"""Fleet personalization: one Ray task per user, resumable, with a fleet report.

* :mod:`imutune.fleet.users` -- who the users are (a folder of per-user folders, or a JSON/CSV manifest);
* :mod:`imutune.fleet.worker` -- the per-user job (windows, calibrate-then-use split, fine-tuning, patch,
  metrics, optional exports), pure: bytes in, bytes out;
* :mod:`imutune.fleet.run` -- Ray orchestration (bounded in-flight tasks, retries of dead workers, per-user
  done markers, resume);
* :mod:`imutune.fleet.report` -- the fleet report (JSON, Markdown, gain histogram PNG);
* :mod:`imutune.fleet.simulate` -- a simulated fleet made from the embedded watch data.

``ray`` is an optional dependency (``pip install -e ".[fleet]"``); it is imported only by
:func:`imutune.fleet.run.run_fleet`.
"""

__all__ = ["FLEET_METHODS", "EXPORT_KINDS"]

#: ``FleetConfig.method`` choices (kept here, torch-free, for the command line's parser).
#: The first is the default (``imutune.personalize.methods.DEFAULT_LOSS``, the one of ``imutune finetune``).
FLEET_METHODS = ("filterloss-soft", "filterloss-cv", "filterloss", "filterloss-learned", "ce", "selective")
#: ``FleetConfig.exports`` choices: the patched bundle, an ONNX export with its manifest.
EXPORT_KINDS = ("bundle", "onnx")
