"""Devices and ops: the common device interface, the op registry and the NumPy reference kernels."""
