"""The applications built on the library: `segment`, `annotate`, `video/` (the pipeline, its
inputs, Ray) and `bench/` (timing and the benchmarks of engines, servers, frames, video and GPU).
The `boxinst` command (boxinst_serve.cli) calls them; the library never imports them."""
