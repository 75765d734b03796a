//! Shared bits of the example milters.
