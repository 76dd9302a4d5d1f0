"""Everything about a network as an object: student zoo, teacher loaders, ONNX export, runtime."""
