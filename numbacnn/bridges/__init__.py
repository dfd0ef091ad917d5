"""Bridges to the ecosystem: weights in and out (weights.py: safetensors, PyTorch state_dicts,
numbacnn.load) and the ONNX export (onnx.py)."""
