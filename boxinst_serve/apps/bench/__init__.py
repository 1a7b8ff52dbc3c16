"""Benchmarks behind `boxinst bench` (`run`: one function per mode, which the command calls):
engines in process (`engines`), a running server under load (`server`) and over hours (`soak`),
the camera-frame budget by input path (`frames`), video (`video`, `video_ray`) and the GPU check
run on a CUDA machine (`gpu`, no OpenCV needed). What they share (percentiles, the stage clock,
the machine header) is in the library: boxinst_serve.measure."""
