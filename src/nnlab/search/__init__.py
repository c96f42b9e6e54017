"""nnlab's hyperparameter search: a Hydra sweeper on current Optuna (sweeper.py) with pruning
(pruning.py), asynchronous workers, several objectives and a study in SQLite or Optuna's journal
file (storage.py), with Hydra's search-space syntax (space.py). See docs/search.md."""
