from lmttm_monai.networks.blocks.memory_attention import (
    MemoryBasicLayer,
    MemoryResample,
    MemorySABlock,
    MemorySwinTransformerBlock,
    MemoryTransformerBlock,
    MemoryWindowAttention,
)
from lmttm_monai.networks.blocks.process_unit import PROCESS_UNITS, MixerBlock, ProcessUnit
from lmttm_monai.networks.blocks.token_learner import TokenLearner

__all__ = ["TokenLearner", "TokenMemory", "LinkedMemory", "ProcessUnit", "MixerBlock", "PROCESS_UNITS"]
__all__ += [
    "MemoryBasicLayer",
    "MemoryResample",
    "MemorySABlock",
    "MemorySwinTransformerBlock",
    "MemoryTransformerBlock",
    "MemoryWindowAttention",
]
