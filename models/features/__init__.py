"""Pre-processing shared by training, export checks and the device: one place, so the device sees
exactly what the model was trained on (log-Mel in ``audio``, face clips in ``video``, vitals grid and
HRV in ``vitals``)."""
