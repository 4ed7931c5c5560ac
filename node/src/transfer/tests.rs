//! Table tests of the recipient's checks (grant, manifest, chunks).
