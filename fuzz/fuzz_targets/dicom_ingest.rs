//! DICOM import: parse → validate must never panic; an accepted object parses the same twice.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medmesh_node::dicom::parse_and_validate;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = parse_and_validate(data) {
        let again = parse_and_validate(data).expect("accepted once, refused the second time");
        assert_eq!(info, again, "parsing the same bytes twice gave different ObjectInfo");
    }
});
