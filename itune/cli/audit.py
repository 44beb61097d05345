"""itune-audit: compose conf/audit.yaml (the training data groups) and write the data audit, no training."""

import hydra
from omegaconf import DictConfig

import itune  # noqa: F401  (registers config resolvers)
from itune.errors import run_command


@hydra.main(config_path="pkg://itune.conf", config_name="audit", version_base="1.3")
def main(cfg: DictConfig) -> None:
    import datasets

    from itune.data.audit import run_audit  # lazily: --help needs no torch

    datasets.disable_progress_bars()
    run_command("audit", run_audit, cfg)  # a failed check (AuditError): the report is written, exit 2


if __name__ == "__main__":
    main()
