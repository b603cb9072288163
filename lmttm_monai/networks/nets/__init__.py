from lmttm_monai.networks.nets.token_turing_machine import LMTTM, TTM, TokenTuringMachine

__all__ = ["LMTTM", "TTM", "TokenTuringMachine"]
