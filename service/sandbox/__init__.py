"""Uploaded teachers are data until proven safe: byte checks (sniff, script_ops' scan, onnx_check),
the stored file layout (model_files), and the bubblewrap jail (jail) that the probe (probe) and the
worker run a teacher in. No torch here: the API imports all of it."""
