"""Every file and folder name of a run directory, in one place (no imports: any module may use them).

A training run writes into its Hydra run directory (`outputs/<date>/<time>`); `itune-eval`, `itune-audit`
and a sweep job write beside them. Readers and writers take the names from here.
"""

from __future__ import annotations

# itune-train (itune.runs.write)
CONFIG_FILE = "config.yaml"  # the resolved config, secrets redacted
TEMPLATE_FILE = "template.json"  # template spec, special tokens, mask policy, fingerprint
# A training run's final metrics, flat, the loggers' keys: train/, val/, data stats, and with eval suites
# eval/, base/, gain/, forgetting/. Read by itune-report (its presence marks a completed job), itune-export's
# model card and the sweep objective.
METRICS_FILE = "metrics.json"
SAMPLES_FILE = "samples.json"  # generated answers of the eval suites (itune-eval writes one in its out dir)
ADAPTER_DIR = "adapter"  # peft adapter + tokenizer
MODEL_DIR = "model"  # full fine-tune weights + tokenizer
CHECKPOINT_DIR = "checkpoints"  # Lightning checkpoints (last.ckpt, ...)
TRAIN_LOG = "train.log"  # Hydra's job log

# data audit (itune.data.audit)
MANIFEST_FILE = "manifest.json"  # the data mixture, with `mixture_hash`
AUDIT_JSON = "audit.json"
AUDIT_MD = "audit.md"
AUDIT_PLOTS_DIR = "audit"

# forgetting report and itune-eval (itune.eval)
FORGETTING_JSON = "forgetting.json"
FORGETTING_MD = "forgetting.md"
FORGETTING_PLOT = "forgetting.png"
# An itune-eval job's metrics, in its own output directory: eval/ of the evaluated model and, against a run's
# base, base/, gain/, forgetting/, interpolate/. Not a training run's metrics.json: a different name so that
# itune-report never counts an evaluation as a completed training job, nor one replaces the other.
EVAL_METRICS_FILE = "eval_metrics.json"
INTERPOLATION_JSON = "interpolation.json"
INTERPOLATION_MD = "interpolation.md"
INTERPOLATION_PLOT = "interpolation.png"

# sweep jobs (itune.sweep.status)
STATUS_FILE = "status.json"
ERROR_FILE = "error.txt"

# Hydra's copies of the job's config (`<run dir>/.hydra/`)
HYDRA_DIR = ".hydra"
HYDRA_CONFIG_FILE = "config.yaml"
HYDRA_HYDRA_FILE = "hydra.yaml"
HYDRA_OVERRIDES_FILE = "overrides.yaml"

# itune-export's output directory
EXPORT_TEMPLATE_FILE = "itune_template.json"
EXPORT_CARD_FILE = "README.md"

# What experiment tracking logs as artifacts, when present (itune.runs.tracking).
ARTIFACT_FILES = (
    CONFIG_FILE,
    TEMPLATE_FILE,
    METRICS_FILE,
    SAMPLES_FILE,
    MANIFEST_FILE,
    AUDIT_JSON,
    AUDIT_MD,
    FORGETTING_JSON,
    FORGETTING_MD,
    FORGETTING_PLOT,
    TRAIN_LOG,
)
ARTIFACT_DIRS = (AUDIT_PLOTS_DIR, ADAPTER_DIR, MODEL_DIR)
