//! Test networks for medmesh: synthetic DICOM studies, local multi-node networks of real
//! `medmesh run` processes ([`cluster`]), and scenarios run against them ([`scenario`]).
//!
//! The `gen` module ([`generate`], [`SyntheticStudy`]) writes realistic, deterministic synthetic
//! studies (same seed, same bytes), with fake patient data where real scanners put real patient
//! data, so that ingest, de-identification and transfer can be tested without real data. Its
//! main items are re-exported here (`gen` is reserved in edition 2024: the path is `r#gen`).
//!
//! ```
//! use medmesh_testnet::{StudySpec, generate_to_vec};
//!
//! let spec = StudySpec { seed: 7, slices: 2, rows: 32, cols: 32, ..StudySpec::default() };
//! let files = generate_to_vec(&spec)?;
//! assert_eq!(files.len(), 2);
//! assert_eq!(&files[0].bytes[128..132], b"DICM");
//! # Ok::<(), medmesh_testnet::GenError>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod bench;
pub mod cluster;
pub mod feeds;
pub mod r#gen;
pub mod netns;
pub mod process;
pub mod roundtrip;
pub mod scenario;
pub mod stats;

pub use r#gen::{
    GenError, GeneratedFile, GeneratedStudy, Modality, PatientOverrides, Phi, PixelRepresentation, Sex, SliceRef,
    StudySpec, SyntheticStudy, generate, generate_to_vec, latin1, restyle,
};
