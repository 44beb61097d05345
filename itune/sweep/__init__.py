"""Sweeps: the job wrapper every itune-train job runs through, job status files, the selection criterion
shared by the Optuna objective and itune-report, the sweep summary callback, the Optuna sweeper, and the
sweep report (report/: collect, select, render, plots, html, rerun), which imports none of the others
but the criterion and the status files."""
