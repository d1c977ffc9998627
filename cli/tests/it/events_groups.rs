//! End-to-end tests (filled in by the events and broker work).
