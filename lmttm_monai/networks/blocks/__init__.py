from lmttm_monai.networks.blocks.conv_lstm import ConvLSTMCell, ConvLSTMState
from lmttm_monai.networks.blocks.lstm_attention import (
    LSTM_ATTENTIONS,
    LSTMSAAttention,
    SALSTMAttention,
    SelfAttentionLSTM,
    channel_attention,
)
from lmttm_monai.networks.blocks.memory import LinkedMemory, TokenMemory
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
__all__ += ["ConvLSTMCell", "ConvLSTMState", "LSTM_ATTENTIONS", "LSTMSAAttention", "SALSTMAttention"]
__all__ += ["SelfAttentionLSTM", "channel_attention"]
