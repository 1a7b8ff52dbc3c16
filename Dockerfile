# GPU deployment of boxinst-serve on NVIDIA's Triton image (see docs/deployment.md).
#
# 24.10 ships Triton 2.51 (the same server release as the nvidia-pytriton 0.7 wheel used for the CPU
# tests) with TensorRT 10.5 and ONNX Runtime 1.19: build TensorRT plans with TensorRT 10.5 (for
# example inside this image) so the plan matches the runtime that loads it.
#
#   boxinst export --checkpoint final.pt --triton model_repository --flavour onnxruntime   # or tensorrt
#   docker build -t boxinst-serve .
#   docker run --gpus all --rm -p 8001:8001 -p 8000:8000 -p 8002:8002 boxinst-serve
FROM nvcr.io/nvidia/tritonserver:24.10-py3

# The Python-backend steps (decode/letterbox, paste/RLE) run boxinst_serve's own pre- and
# post-processing: numpy, OpenCV and pycocotools; no torch in the serving image.
WORKDIR /opt/boxinst-serve
COPY pyproject.toml README.md ./
COPY boxinst_serve ./boxinst_serve
RUN pip install --no-cache-dir "numpy<2" "opencv-python-headless>=4.8,<4.12" "pycocotools>=2.0.7" \
    && pip install --no-cache-dir --no-deps .

# The repository with boxinst_net written by `boxinst export --triton ... --flavour onnxruntime|tensorrt`.
COPY model_repository /models

EXPOSE 8000 8001 8002
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
    CMD python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2)"
CMD ["tritonserver", "--model-repository=/models", "--strict-readiness=true", "--exit-timeout-secs=30"]
