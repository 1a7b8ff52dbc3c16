"""Video: the frame pipeline and its resumable per-frame jsonl (`pipeline`), the video sources
(`inputs`: files, folders, globs, list files, cameras) and the Ray cluster run (`ray`)."""
