"""itune-chat: chat with a run on the terminal (conf/chat.yaml → run_chat)."""

import hydra
from omegaconf import DictConfig

import itune  # noqa: F401  (registers config resolvers)
from itune.errors import run_command


@hydra.main(config_path="pkg://itune.conf", config_name="chat", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from itune.inference.chat import run_chat  # lazily: --help and --cfg need no torch

    run_command("chat", run_chat, cfg)


if __name__ == "__main__":
    main()
