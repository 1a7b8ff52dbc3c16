# GPU deployment of boxinst-serve on NVIDIA's Triton image (see docs/deployment.md).
#
# 24.10 ships Triton 2.51 (the same server release as the nvidia-pytriton 0.7 wheel used for the CPU
# tests) with TensorRT 10.5 and ONNX Runtime 1.19: build TensorRT plans with TensorRT 10.5 (for
# example inside this image) so the plan matches the runtime that loads it.
#
#   boxinst export --checkpoint final.pt --triton model_repository --flavour onnxruntime   # or tensorrt
#   docker build -t boxinst-serve .
#   docker run --gpus all --rm -p 8001:8001 -p 8000:8000 -p 8002:8002 --shm-size=1g boxinst-serve
# (--shm-size: the Python-backend steps exchange tensors through /dev/shm; docs/deployment.md)
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
# Health is a tiny inference through the raw-frame ensemble, not the ready endpoint: Triton 2.51
# keeps answering ready when a Python step's process has died (boxinst_serve/serving/probe.py).
# `boxinst serve`'s supervisor, which reloads such a step, does not run in this image: let the
# orchestrator restart an unhealthy container (a Kubernetes liveness probe running the same command).
HEALTHCHECK --interval=10s --timeout=6s --start-period=60s \
    CMD python3 -m boxinst_serve.serving.probe --url 127.0.0.1:8000
# This CMD serves gRPC, HTTP and metrics on every address with no TLS and no key: for a trusted
# network only. To expose it, give tritonserver the flags `boxinst serve` builds
# (docs/deployment.md, "Securing a server"), e.g.
#   docker run --gpus all -p 8001:8001 --shm-size=1g -v /etc/boxinst:/certs:ro -e BOXINST_API_KEY=$KEY boxinst-serve \
#     sh -c 'exec tritonserver --model-repository=/models --strict-readiness=true --exit-timeout-secs=30 \
#       --grpc-use-ssl=true --grpc-server-cert=/certs/server.pem --grpc-server-key=/certs/server.key \
#       --grpc-restricted-protocol=inference,shared-memory,model-repository,model-config,statistics,trace,logging,metadata:boxinst-api-key=$BOXINST_API_KEY \
#       --http-restricted-api=inference,shared-memory,model-repository,model-config,statistics,trace,logging,metadata:boxinst-api-key=$BOXINST_API_KEY \
#       --http-address=127.0.0.1 --metrics-address=127.0.0.1'
# (HTTP and metrics have no TLS in 2.51: keep them inside the container; the probe reads the key
# from BOXINST_API_KEY.)
CMD ["tritonserver", "--model-repository=/models", "--strict-readiness=true", "--exit-timeout-secs=30"]
