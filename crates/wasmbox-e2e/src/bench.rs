//! The benchmark (filled in below).
