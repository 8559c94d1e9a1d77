"""Official scoring rules of the benchmarks, re-implemented as pure functions (one module per protocol)."""
