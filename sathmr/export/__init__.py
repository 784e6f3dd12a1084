"""Static-shape export (ONNX, TensorRT) with fixed token budgets."""
