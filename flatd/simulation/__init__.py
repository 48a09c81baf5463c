"""Fake cameras with a known truth, for the demo, the tests and the benchmarks:
calibrated flats, multi-extension (mosaic) frames and raw frames with an overscan."""
