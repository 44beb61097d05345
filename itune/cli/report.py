"""itune-report: compose conf/report.yaml and report on sweep directories (itune.sweep.report.run_report).

itune-report outputs/multirun/2026-01-01/12-00-00 [more sweep dirs] [key=value ...]
itune-report sweeps=[outputs/multirun/…] 'criterion.at_least={forgetting/general_delta_lo: -0.02}'
"""

import sys

import hydra
from omegaconf import DictConfig

from itune.errors import run_command


def positional_dirs_to_override(argv: list[str]) -> list[str]:
    """`dir1 dir2 k=v` → `k=v sweeps=['dir1','dir2']` (arguments without `=`, `-`, `~` or `+` are dirs).

    >>> positional_dirs_to_override(["outputs/multirun/a", "out=x"])
    ['out=x', "sweeps=['outputs/multirun/a']"]
    """
    dirs = [a for a in argv if "=" not in a and not a.startswith(("-", "~", "+"))]
    if not dirs:
        return argv
    quoted = ",".join("'" + d.replace("\\", "\\\\").replace("'", "\\'") + "'" for d in dirs)
    return [a for a in argv if a not in dirs] + [f"sweeps=[{quoted}]"]


def replace_bounds(argv: list[str]) -> list[str]:
    """`criterion.at_least={...}` (or at_most) replaces the preset's bounds instead of merging into them.

    >>> replace_bounds(["criterion.at_least={eval/x: 0.9}"])
    ['~criterion.at_least', '+criterion.at_least={eval/x: 0.9}']
    """
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in ("criterion.at_least", "criterion.at_most") and value.lstrip().startswith("{"):
            out += [f"~{key}", f"+{key}={value}"]
        else:
            out.append(arg)
    return out


@hydra.main(config_path="pkg://itune.conf", config_name="report", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    from itune.sweep.report import run_report  # lazily: --help needs no matplotlib

    run_command("report", run_report, cfg)


def main() -> None:
    sys.argv = [sys.argv[0], *replace_bounds(positional_dirs_to_override(sys.argv[1:]))]
    _main()


if __name__ == "__main__":
    main()
