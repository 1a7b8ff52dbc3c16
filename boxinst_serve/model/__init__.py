"""CondInst network (BoxInst is CondInst trained with box-only mask losses)."""
from boxinst_serve.model.condinst import CondInst, HeadOutputs, build_model

__all__ = ["CondInst", "HeadOutputs", "build_model"]
