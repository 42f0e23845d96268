"""The default training recipe: what ``neopain train``, the studies and the demo model use unless told otherwise.

Why here, in a module of constants: the choice comes from the learning curve (docs/benchmarks/learning_curve.md),
and the demo and the studies read it without importing torch.

- ``tiny`` config: the one the CPU trains in minutes. The ``small`` config (the full topology at a quarter of
  the widths) was worse at 60 infants even after 36 epochs (ICC(A,1) 0.815 against 0.879); data, not capacity,
  is what the learning curve shows limiting the model.
- 12 epochs: in the fusion study's cross-validation (40 training infants per fold) fusion's validation MAE
  is at its best at epoch 11 of 12 and flat over the last three.
"""

DEFAULT_CONFIG = "tiny"
DEFAULT_EPOCHS = 12
