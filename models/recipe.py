"""The default training recipe: what ``neopain train``, the studies and the demo model use unless told otherwise.

Why here, in a module of constants: the choice comes from the learning curve (docs/benchmarks/learning_curve.md),
and the demo and the studies read it without importing torch.

- ``tiny`` config: the one the CPU trains in minutes; docs/benchmarks/learning_curve.md says what the
  ``small`` config (the full topology at a quarter of the widths) gains.
- 12 epochs: in the fusion study's cross-validation (40 training infants per fold) fusion's validation MAE
  is at its best at epoch 11 of 12 and flat over the last three.
"""

DEFAULT_CONFIG = "tiny"
DEFAULT_EPOCHS = 12
