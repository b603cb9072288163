from lmttm_monai.networks.nets.memory_attention import (
    TRANSMISSIONS,
    MemorySwinTransformer,
    MemorySwinUNETR,
    MemoryUNETR,
    MemoryViT,
    load_self_attention_weights,
    to_memory_attention,
)
from lmttm_monai.networks.nets.salstm_unet import SALSTM_ATTENTIONS, SALSTMUNet
from lmttm_monai.networks.nets.token_turing_machine import LMTTM, TTM, TokenTuringMachine

__all__ = ["LMTTM", "TTM", "TokenTuringMachine"]
__all__ += [
    "TRANSMISSIONS",
    "MemorySwinTransformer",
    "MemorySwinUNETR",
    "MemoryUNETR",
    "MemoryViT",
    "load_self_attention_weights",
    "to_memory_attention",
]
__all__ += ["SALSTM_ATTENTIONS", "SALSTMUNet"]
