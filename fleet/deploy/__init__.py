"""What ships to a device: the integer-only inference path and its ONNX export."""
