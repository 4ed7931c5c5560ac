//! `/medmesh/transfer/1` requests and answers: CBOR decode with size, shape, trailing-byte and
//! version checks (`transfer::wire::decode`, as the request-response codec calls it), then the
//! checks a node makes before acting on one (transfer and request ids, Study Instance UID, the
//! signed grant or receipt it carries), and the round trip: what decodes encodes to a value that
//! decodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medmesh_node::dicom::check_uid;
use medmesh_node::transfer::parse_id;
use medmesh_node::transfer::wire::{
    self, Answer, AnswerBody, GRANT_DOMAIN, Grant, MAX_MESSAGE, Msg, MsgBody, RECEIPT_DOMAIN, Receipt,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = wire::decode::<Msg>("transfer message", data, MAX_MESSAGE) {
        match &msg.body {
            MsgBody::Request {
                request_id, study_uid, ..
            } => {
                let _ = parse_id(request_id);
                let _ = check_uid(study_uid);
            }
            MsgBody::Decided { transfer_id, .. } => {
                let _ = parse_id(transfer_id);
            }
            MsgBody::Receipt { receipt } => {
                let _ = wire::open_signed::<Receipt>("receipt", RECEIPT_DOMAIN, receipt, MAX_MESSAGE);
            }
        }
        let again = wire::encode("transfer message", &msg).expect("a decoded message encodes");
        let back = wire::decode::<Msg>("transfer message", &again, usize::MAX).expect("its encoding decodes");
        assert_eq!(back, msg, "the message changed in a round trip");
    }
    if let Ok(answer) = wire::decode::<Answer>("transfer answer", data, MAX_MESSAGE) {
        match &answer.body {
            AnswerBody::Granted { transfer_id, grant } => {
                let _ = parse_id(transfer_id);
                let _ = wire::open_signed::<Grant>("grant", GRANT_DOMAIN, grant, MAX_MESSAGE);
            }
            AnswerBody::Denied { transfer_id, .. } => {
                if let Some(id) = transfer_id {
                    let _ = parse_id(id);
                }
            }
            AnswerBody::Pending { transfer_id, .. } => {
                let _ = parse_id(transfer_id);
            }
            AnswerBody::Ack | AnswerBody::Refused { .. } | AnswerBody::RetryLater { .. } => {}
        }
        let again = wire::encode("transfer answer", &answer).expect("a decoded answer encodes");
        let back = wire::decode::<Answer>("transfer answer", &again, usize::MAX).expect("its encoding decodes");
        assert_eq!(back, answer, "the answer changed in a round trip");
    }
});
