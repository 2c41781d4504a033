"""training-db-pipeline: train and measure models from the annotation app's database.

The library functions behind `python -m trainer`:

- :func:`trainer.runs.training.train` fits a model on ``datasets.training_examples``
  and records the run, its metrics and the model version.
- :func:`trainer.runs.predict.predict_csv` labels segments with a stored model version.
- :func:`trainer.data.demo.load_demo` loads the bundled FUNSD forms into the app's tables.
"""

__version__ = "0.1.0"
