"""Quantization: what a quantized model is (``spec``, torch-free), LSQ quantizers, model surgery, activation
signs, bit packing, uplink codecs and integer export.

Nothing is imported here, so the numpy-only modules (``spec``, ``packing``, ``codecs``) load without torch.
"""
