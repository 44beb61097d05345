"""Sweeps: the job wrapper every itune-train job runs through, job status files, the selection criterion
shared by the Optuna objective and itune-report, the sweep summary callback and the Optuna sweeper."""
