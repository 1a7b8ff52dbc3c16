"""Compatibility: repositories exported before the package layout (issue: the house) import
`check_frame` from here. New code imports boxinst_serve.protocol."""
from boxinst_serve.protocol import FUSED_RAW_MODEL, RAW_MODEL, check_frame  # noqa: F401
