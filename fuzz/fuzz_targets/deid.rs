//! De-identification: any bytes must give an output or an error, never a
//! panic; an output parses again and says the patient identity was removed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medmesh_node::consent_schema::DeidLevel;
use medmesh_node::deid::{DeidKeys, DeidOption, Profile, deidentify};

fuzz_target!(|data: &[u8]| {
    let keys = DeidKeys::from_secret(&[1u8; 32]);
    let profile = Profile::new(
        DeidLevel::Pseudonymised,
        &[DeidOption::RetainLongModifiedDates, DeidOption::CleanDescriptors],
        Vec::new(),
    )
    .expect("a valid profile");
    if let Ok(out) = deidentify(data, &profile, &keys) {
        let (obj, _) = medmesh_node::dicom::parse_whole(&out.bytes).expect("the output parses");
        let removed = obj
            .get(dicom_dictionary_std::tags::PATIENT_IDENTITY_REMOVED)
            .and_then(|e| e.to_str().ok().map(|s| s.trim().to_string()));
        assert_eq!(removed.as_deref(), Some("YES"));
    }
});
