"""qacloud benchmarks: the gate policy in simulation (``bench.gate_sim``) and real hot paths."""
