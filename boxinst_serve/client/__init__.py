"""The light client: `BoxInstClient` and `AsyncBoxInstClient` (gRPC to a `boxinst` Triton
repository) and the shared-memory transport they use on the same host (`shm`).

Needs numpy and tritonclient[grpc]; never torch or OpenCV at import."""
from boxinst_serve.client.grpc_client import (AsyncBoxInstClient, BoxInstClient, BoxInstError,  # noqa: F401
                                              BoxInstTimeout, ServerBusy, encode_input)
