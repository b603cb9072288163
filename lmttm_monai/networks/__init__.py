"""Networks of lmttm_monai, laid out like ``monai.networks``: reusable ``blocks`` and whole ``nets``.

Every net is importable by full dotted path (``lmttm_monai.networks.nets.LMTTM``, which is what a bundle's
``_target_`` needs: MONAI resolves short names only inside ``monai.*``) and by name from a small registry::

    from lmttm_monai.networks import get_network, NETWORKS
    net = get_network("lmttm", spatial_dims=3, in_channels=1, out_channels=2, img_size=28)
"""

from __future__ import annotations

import torch.nn as nn
from monai.utils import ComponentStore

from lmttm_monai.networks import blocks, nets
from lmttm_monai.networks.nets import LMTTM, TTM, MemorySwinUNETR, MemoryUNETR
from lmttm_monai.networks.nets import SALSTMUNet

__all__ = ["NETWORKS", "get_network", "blocks", "nets"]

NETWORKS = ComponentStore("lmttm_monai networks", "Networks provided by lmttm_monai, by registry name.")
NETWORKS.add("lmttm", "Linked Memory Token Turing Machine (Wei et al., CMPB 2025)", LMTTM)
NETWORKS.add("ttm", "Token Turing Machine (Ryoo et al., CVPR 2023)", TTM)
NETWORKS.add("salstm_unet", "U-shaped CNN with SALSTM / LSTMSA over adjacent slices (Ji et al., TIP 2024)", SALSTMUNet)
NETWORKS.add("memory_unetr", "MONAI UNETR with Memory-Attention (MAM), Sequential Transmission Strategy", MemoryUNETR)
NETWORKS.add("memory_swin_unetr", "MONAI SwinUNETR with Memory-Attention (MAM), In-Stage Transmission", MemorySwinUNETR)


def get_network(name: str, **kwargs) -> nn.Module:
    """Build the network registered as ``name`` (case-insensitive) with the constructor ``kwargs``."""
    key = name.lower()
    if key not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; registered networks: {', '.join(sorted(NETWORKS.names))}.")
    return NETWORKS[key](**kwargs)
