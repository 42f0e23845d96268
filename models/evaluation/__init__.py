"""Clinical evaluation: the paper's table with plots, for a cross-validation run or any trained model on any
dataset (external validation).

Per model: MAE (95 % CI over infants), RMSE, Pearson r, ICC(A,1) and ICC(C,1) with 95 % CI against the mean
rater; the inter-rater ICC of the raters themselves; on synthetic cohorts the ceiling (the hidden truth vs
the mean rater, :mod:`models.evaluation.truth`) and each model's gap to it; a constant-median yardstick;
repeated-measures Bland-Altman and scatter plots; MAE per gestational-age group, skin-tone group, modality
availability and synthetic confounder; per-infant paired Wilcoxon signed-rank p between models. Everything
goes to one folder: report.md, metrics.json, PNG plots (and predictions.csv for an external validation).

Modules: ``table`` (the windows x predictions table), ``truth`` (truth.csv, ceiling), ``predictors`` (any
trained model as a function of samples), ``metrics``, ``plots``, ``report`` (Markdown), ``core`` (the two
entry points), ``command`` (the CLI).
"""

from models.evaluation.core import evaluate_models, evaluate_run, report_table

__all__ = ["evaluate_models", "evaluate_run", "report_table"]
