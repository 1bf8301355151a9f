//! See benches/core.rs and gateways/compare.py.
