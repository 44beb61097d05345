"""Inference on a trained run or a base model: generation, itune-generate, itune-chat, itune-export, WiSE-FT.

Modules: `generation` (batched generation through a template), `generate` (itune-generate), `chat`
(itune-chat), `export` (itune-export), `interpolate` (WiSE-FT weights), `eval_mode` (a model in eval mode
for a block). Nothing is imported here, so `itune.inference.eval_mode` costs only torch.
"""
