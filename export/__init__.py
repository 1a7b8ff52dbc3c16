"""Export of trained models: ONNX graph, TensorRT plan, Triton model repository."""
