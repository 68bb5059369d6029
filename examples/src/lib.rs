//! Runnable Detour examples live in this package's `examples/` targets.
