"""The bundled FSPO trainer and its evaluation.

- `config`: `TrainConfig`, `load_train_config(path)` (YAML, one-line `ConfigError`s).
- `data`: episodes from a run directory or a Hub dataset; shot truncation.
- `loss`: IPO and DPO as pure functions, the reference the tests hold TRL to.
- `trainer`: `run_train(run_dir_or_dataset, config) -> TrainSummary`.
- `evaluate`: `run_eval(run_dir_or_dataset, config, judge) -> EvalSummary`.

`trainer` and `evaluate` import torch, transformers and TRL; import them where they are
used, so that importing this package stays cheap.
"""

from fspo_data.train.config import TrainConfig, load_train_config

__all__ = ["TrainConfig", "load_train_config"]
