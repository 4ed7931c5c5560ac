//! Association acceptance as a pure function: who may associate with the
//! SCP ([`decide`]), and the A-ASSOCIATE-RJ of a refusal ([`Rejection`]).
//!
//! The rules, in order: the called AE title must be ours (else reason 7,
//! called AE title not recognised); the calling AE title and the host it
//! connects from must be a pair of the allow-list (else reason 3, calling AE
//! title not recognised); and fewer than `max_associations` may be served
//! already (else a transient rejection by the service provider, temporary
//! congestion). AE titles compare without their leading and trailing
//! spaces (insignificant in the AE VR), case-sensitively.

use std::net::IpAddr;

use dicom_ul::pdu::{
    AssociationRJ, AssociationRJResult, AssociationRJServiceProviderPresentationReason, AssociationRJServiceUserReason,
    AssociationRJSource,
};

use crate::config::gateway::CallingAe;

/// One allowed calling AE, its host parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    /// The calling AE title.
    pub ae_title: String,
    /// The address it connects from.
    pub host: IpAddr,
}

impl Allowed {
    /// The entries of `[[gateway.calling]]` whose host is an IP address
    /// (the configuration check refuses the others).
    #[must_use]
    pub fn from_config(calling: &[CallingAe]) -> Vec<Allowed> {
        calling
            .iter()
            .filter_map(|c| {
                Some(Allowed {
                    ae_title: c.ae_title.trim().to_string(),
                    host: c.host.parse().ok()?,
                })
            })
            .collect()
    }
}

/// An association request, as far as acceptance is concerned.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The AE title the requester called.
    pub called_ae: &'a str,
    /// The requester's AE title.
    pub calling_ae: &'a str,
    /// The address the connection comes from.
    pub host: IpAddr,
    /// Associations being served now (this one not counted).
    pub active: u32,
}

/// The acceptance rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Our AE title.
    pub ae_title: String,
    /// The allow-list.
    pub allowed: Vec<Allowed>,
    /// Associations served at once.
    pub max_associations: u32,
}

/// Why an association is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The called AE title is not ours.
    #[error("called AE title not recognised")]
    CalledAeNotRecognised,
    /// The calling AE title and host are not on the allow-list.
    #[error("calling AE title not recognised (or not from its host)")]
    CallingAeNotRecognised,
    /// `max_associations` are being served.
    #[error("temporary congestion: too many associations")]
    Congestion,
}

impl Rejection {
    /// The A-ASSOCIATE-RJ's result (1 permanent, 2 transient), source
    /// (1 service user, 3 service provider - presentation) and reason.
    #[must_use]
    pub fn numbers(self) -> (u8, u8, u8) {
        match self {
            Rejection::CallingAeNotRecognised => (1, 1, 3),
            Rejection::CalledAeNotRecognised => (1, 1, 7),
            Rejection::Congestion => (2, 3, 1),
        }
    }

    /// The A-ASSOCIATE-RJ PDU content.
    #[must_use]
    pub fn to_pdu(self) -> AssociationRJ {
        match self {
            Rejection::CallingAeNotRecognised => AssociationRJ {
                result: AssociationRJResult::Permanent,
                source: AssociationRJSource::ServiceUser(AssociationRJServiceUserReason::CallingAETitleNotRecognized),
            },
            Rejection::CalledAeNotRecognised => AssociationRJ {
                result: AssociationRJResult::Permanent,
                source: AssociationRJSource::ServiceUser(AssociationRJServiceUserReason::CalledAETitleNotRecognized),
            },
            Rejection::Congestion => AssociationRJ {
                result: AssociationRJResult::Transient,
                source: AssociationRJSource::ServiceProviderPresentation(
                    AssociationRJServiceProviderPresentationReason::TemporaryCongestion,
                ),
            },
        }
    }
}

/// Decides whether an association request is accepted.
///
/// # Errors
/// The [`Rejection`] to answer with.
pub fn decide(policy: &Policy, request: &Request<'_>) -> Result<(), Rejection> {
    let trim = |s: &str| s.trim_matches(|c: char| c == ' ' || c == '\0').to_string();
    if trim(request.called_ae) != policy.ae_title.trim() {
        return Err(Rejection::CalledAeNotRecognised);
    }
    let calling = trim(request.calling_ae);
    let host = request.host.to_canonical();
    if !policy
        .allowed
        .iter()
        .any(|a| a.ae_title == calling && a.host.to_canonical() == host)
    {
        return Err(Rejection::CallingAeNotRecognised);
    }
    if request.active >= policy.max_associations {
        return Err(Rejection::Congestion);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn policy() -> Policy {
        Policy {
            ae_title: "MEDMESH".into(),
            allowed: Allowed::from_config(&[
                CallingAe {
                    ae_title: "CT01".into(),
                    host: "10.0.0.5".into(),
                },
                CallingAe {
                    ae_title: "MR01".into(),
                    host: "::1".into(),
                },
                CallingAe {
                    ae_title: "BAD".into(),
                    host: "not-an-ip".into(),
                },
            ]),
            max_associations: 2,
        }
    }

    #[test]
    fn table() {
        let p = policy();
        assert_eq!(p.allowed.len(), 2, "an entry whose host is no IP address is dropped");
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for (called, calling, host, active, want) in [
            ("MEDMESH", "CT01", "10.0.0.5", 0, Ok(())),
            ("MEDMESH", "CT01", "10.0.0.5", 1, Ok(())),
            ("MEDMESH  ", " CT01 ", "10.0.0.5", 0, Ok(())),
            ("MEDMESH", "CT01", "::ffff:10.0.0.5", 0, Ok(())),
            ("MEDMESH", "MR01", "::1", 0, Ok(())),
            ("MEDMESH", "CT01", "10.0.0.5", 2, Err(Rejection::Congestion)),
            ("MEDMESH", "CT01", "10.0.0.6", 0, Err(Rejection::CallingAeNotRecognised)),
            ("MEDMESH", "CT02", "10.0.0.5", 0, Err(Rejection::CallingAeNotRecognised)),
            ("MEDMESH", "ct01", "10.0.0.5", 0, Err(Rejection::CallingAeNotRecognised)),
            ("MEDMESH", "MR01", "10.0.0.5", 0, Err(Rejection::CallingAeNotRecognised)),
            ("MEDMESH", "BAD", "10.0.0.5", 0, Err(Rejection::CallingAeNotRecognised)),
            ("MEDMESH", "", "10.0.0.5", 0, Err(Rejection::CallingAeNotRecognised)),
            ("OTHER", "CT01", "10.0.0.5", 0, Err(Rejection::CalledAeNotRecognised)),
            ("", "CT01", "10.0.0.5", 0, Err(Rejection::CalledAeNotRecognised)),
            // The permanent rejections come before congestion.
            ("OTHER", "CT02", "10.0.0.5", 9, Err(Rejection::CalledAeNotRecognised)),
            ("MEDMESH", "CT02", "10.0.0.5", 9, Err(Rejection::CallingAeNotRecognised)),
        ] {
            let r = Request {
                called_ae: called,
                calling_ae: calling,
                host: ip(host),
                active,
            };
            assert_eq!(decide(&p, &r), want, "{called:?} {calling:?} {host} {active}");
        }
    }

    #[test]
    fn rejection_numbers_are_those_of_ps3_8() {
        assert_eq!(Rejection::CallingAeNotRecognised.numbers(), (1, 1, 3));
        assert_eq!(Rejection::CalledAeNotRecognised.numbers(), (1, 1, 7));
        assert_eq!(Rejection::Congestion.numbers(), (2, 3, 1));
        let mut bytes = Vec::new();
        for r in [
            Rejection::CallingAeNotRecognised,
            Rejection::CalledAeNotRecognised,
            Rejection::Congestion,
        ] {
            bytes.clear();
            dicom_ul::write_pdu(&mut bytes, &dicom_ul::Pdu::AssociationRJ(r.to_pdu())).unwrap();
            // A-ASSOCIATE-RJ: type 3, reserved, length 4, reserved, result, source, reason.
            let (result, source, reason) = r.numbers();
            assert_eq!(bytes, [3, 0, 0, 0, 0, 4, 0, result, source, reason]);
        }
    }

    proptest! {
        #[test]
        fn nothing_off_the_list_is_ever_accepted(
            called in prop_oneof![Just("MEDMESH".to_string()), Just(" MEDMESH ".to_string()), "[ -~]{0,16}"],
            calling in prop_oneof![Just("CT01".to_string()), Just("MR01".to_string()), "[ -~]{0,16}"],
            octets in prop_oneof![Just([10u8, 0, 0, 5]), Just([127u8, 0, 0, 1]), any::<[u8; 4]>()],
            v6 in any::<bool>(),
            active in 0u32..4,
            extra in proptest::collection::vec(("[A-Z0-9]{1,16}", any::<[u8; 4]>()), 0..4),
        ) {
            let mut p = policy();
            p.allowed.extend(extra.iter().map(|(ae, o)| Allowed { ae_title: ae.clone(), host: IpAddr::from(*o) }));
            let host = if v6 {
                IpAddr::from(std::net::Ipv4Addr::from(octets).to_ipv6_mapped())
            } else {
                IpAddr::from(octets)
            };
            let r = Request { called_ae: &called, calling_ae: &calling, host, active };
            if decide(&p, &r).is_ok() {
                prop_assert_eq!(called.trim(), "MEDMESH");
                prop_assert!(active < p.max_associations);
                let listed = p.allowed.iter().any(|a| {
                    a.ae_title == calling.trim() && a.host.to_canonical() == host.to_canonical()
                });
                prop_assert!(listed, "accepted {:?} from {} off the list", calling, host);
            }
        }
    }
}
