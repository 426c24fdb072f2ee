"""pdsim's live side: a real Llama-architecture model in torch (``pdsim.live.model``), the compute core
of the reference serving engine, and the tools that time it.

This package is the only part of ``pdsim`` that imports torch, and it does so lazily: importing
``pdsim.live`` loads nothing; ``from pdsim.live.model import LlamaModel`` imports torch.
"""
