"""itune-audit: compose conf/audit.yaml (the training data groups) and write the data audit, no training."""

import sys

import datasets
import hydra
from omegaconf import DictConfig

import itune  # noqa: F401  (registers config resolvers)
from itune.data.audit import AuditError, run_audit


@hydra.main(config_path="pkg://itune.conf", config_name="audit", version_base="1.3")
def main(cfg: DictConfig) -> None:
    datasets.disable_progress_bars()
    try:
        run_audit(cfg)
    except AuditError as e:  # the report is written; say why it failed and exit non-zero
        print(e, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
