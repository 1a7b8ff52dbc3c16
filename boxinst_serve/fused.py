"""Compatibility: repositories exported before the package layout (issue: the house) import
`FramePipeline` from here. New code imports boxinst_serve.serving.fused."""
from boxinst_serve.serving.fused import STAGES, FramePipeline, net_onnx_path  # noqa: F401
