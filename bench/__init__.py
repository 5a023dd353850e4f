"""Database and render benchmarks (measurements, not tests)."""
