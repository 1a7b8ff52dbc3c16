"""boxinst-serve: BoxInst instance segmentation trained from boxes, served in real time."""
__version__ = "0.1.0"
