"""The node agent: owns a machine's devices, runs partitions on them, pre-combines partials."""
