"""The experiment pipeline (DESIGN section 3), one module per stage of a run:

- ``checks``: the experiment against the registries (names, params), before anything is written;
- ``preflight`` / ``multimodal_preflight``: ``--check``: models, explainers and methods built on one
  batch;
- ``session``: the run folder (one seed, or one sub-folder per seed), status and the seed summary;
- ``flow``: one seed, stage by stage, with ``context`` (``RunContext`` and the shared helpers);
- ``teacher``, ``multimodal_teachers`` (named per-modality teachers), ``teacher_saliency`` (the
  cached teacher maps), ``generated`` / ``generated_process`` / ``generated_checks`` (the cGAN-KD
  stage over the ``xkd.gan`` library), ``students``, ``evaluation``, ``export`` /
  ``export_video`` (explanations of the evaluation subset), then the report (``xkd.report``);
- ``summary_table``: the summary as a text or Markdown table.

Import from the modules; this package imports nothing at load time."""
