//! Test vectors of the transfer wire formats (docs/vectors/transfer-v1.json).
