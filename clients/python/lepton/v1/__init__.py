"""Generated gRPC stubs for protos/lepton/v1 (python protos/generate.py)."""
