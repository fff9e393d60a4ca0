//! Per-client session state machine (sans-IO).
