//! The codes of the transfer protocols, as enums, with their wire strings in
//! one table each: the refusals a recipient (of a stream) or a holder (of a
//! message) sends, and the reasons a transfer is denied or ended. The side
//! that produces a code and the side that compares it both use the enum;
//! the wire carries the string, unchanged.

/// Declares a code enum, its wire table, and the conversions.
macro_rules! codes {
    ($(#[$meta:meta])* $name:ident, $table:ident { $($(#[$vmeta:meta])* $variant:ident = $wire:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        /// Every code with its wire string (the one table).
        pub const $table: &[($name, &str)] = &[$(($name::$variant, $wire),)+];

        impl $name {
            /// The wire string.
            #[must_use]
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $wire,)+
                }
            }

            /// The code a wire string names, if it is one of these.
            #[must_use]
            pub fn from_wire(s: &str) -> Option<Self> {
                $table.iter().find(|(_, w)| *w == s).map(|(c, _)| *c)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl From<$name> for String {
            fn from(c: $name) -> String {
                c.as_str().to_string()
            }
        }
    };
}

codes! {
    /// Why a stream or a transfer message is refused (the `code` of a
    /// [`super::wire::Refuse`] or of an `AnswerBody::Refused`).
    RefuseCode, REFUSE_CODES {
        /// The refusing side failed; it will be tried again.
        Internal = "internal",
        /// The grant does not verify.
        BadGrant = "bad-grant",
        /// The grant or manifest is for another recipient or key.
        WrongRecipient = "wrong-recipient",
        /// The grant has expired.
        GrantExpired = "grant-expired",
        /// The peer is not trusted for the grant's purpose.
        Untrusted = "untrusted",
        /// The manifest does not verify or is malformed.
        BadManifest = "bad-manifest",
        /// The manifest was not made for the grant sent with it.
        GrantMismatch = "grant-mismatch",
        /// The recipient holds the study already (imported there).
        HeldLocally = "held-locally",
        /// No such transfer.
        UnknownTransfer = "unknown-transfer",
        /// The transfer is complete; a manifest sent again is refused.
        Replayed = "replayed",
        /// The transfer is denied or failed.
        Closed = "closed",
        /// The transfer started under another manifest.
        ManifestMismatch = "manifest-mismatch",
        /// The answer to the request is still being recorded.
        NotYet = "not-yet",
        /// The de-identification attestation does not verify.
        BadAttestation = "bad-attestation",
        /// The stream's opening frame is malformed.
        BadOpen = "bad-open",
        /// A chunk was refused.
        ChunkRefused = "chunk-refused",
        /// A delivery receipt does not verify.
        BadReceipt = "bad-receipt",
        /// A delivery receipt names another manifest or other objects.
        ReceiptMismatch = "receipt-mismatch",
        /// Landing: an object of another study, or not as the index describes it.
        BadObject = "bad-object",
        /// Landing: the study or an object is held here already.
        AlreadyHeld = "already-held",
    }
}

codes! {
    /// Why a transfer is denied, or ended before it completed (the `code`
    /// of a reason recorded, logged and sent to the other side).
    EndCode, END_CODES {
        /// The holder has no such study it may send (what a requester learns).
        NotAvailable = "not-available",
        /// Consent and policy do not allow it.
        Denied = "denied",
        /// A person denied the request.
        DeniedByApprover = "denied-by-approver",
        /// A series left out for identifiers burned into its pixels.
        BurnedIn = "burned-in",
        /// A request refused by the holder (recorded by the requester).
        Refused = "refused",
        /// The grant has expired.
        GrantExpired = "grant-expired",
        /// The peer's membership was revoked.
        PeerRevoked = "peer-revoked",
        /// The peer was blocked.
        PeerBlocked = "peer-blocked",
        /// The purpose is no longer certified for the peer.
        PurposeRemoved = "purpose-removed",
        /// The peer's certificate expired.
        CertificateExpired = "certificate-expired",
        /// The peer is no longer trusted.
        PeerUntrusted = "peer-untrusted",
        /// The consent was withdrawn.
        ConsentWithdrawn = "consent-withdrawn",
        /// The consent expired.
        ConsentExpired = "consent-expired",
        /// Consent and policy no longer allow it.
        ConsentDenied = "consent-denied",
        /// Consent and policy now require a stronger level.
        LevelRaised = "level-raised",
        /// Consent now covers fewer of the granted series.
        ScopeNarrowed = "scope-narrowed",
        /// The study is no longer held, or is locked.
        StudyUnavailable = "study-unavailable",
        /// No object of the granted series is within the consent's scope.
        NothingInScope = "nothing-in-scope",
        /// The holder ended the transfer.
        EndedByHolder = "ended-by-holder",
    }
}

codes! {
    /// Why a request waits at the holder, other than for a person's
    /// approval (whose reasons are consent-schema's).
    PendingCode, PENDING_CODES {
        /// The study is being fetched from the holder site's PACS
        /// (`[policy] fetch_from_pacs`).
        FetchingFromPacs = "fetching-from-pacs",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// Every wire string is unique, kebab-case, and round-trips through its
    /// enum; the wire strings are the ones peers already send.
    #[test]
    fn the_code_tables_are_one_to_one_with_the_wire_strings() {
        fn check<C: Copy + Eq + std::fmt::Debug>(
            table: &[(C, &str)],
            as_str: fn(C) -> &'static str,
            from_wire: fn(&str) -> Option<C>,
        ) {
            let mut seen = HashSet::new();
            for (code, wire) in table {
                assert!(seen.insert(*wire), "{wire} twice");
                assert!(
                    wire.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'),
                    "{wire} is not kebab-case"
                );
                assert_eq!(as_str(*code), *wire);
                assert_eq!(from_wire(wire), Some(*code));
            }
            assert_eq!(from_wire("no-such-code"), None);
        }
        check(REFUSE_CODES, RefuseCode::as_str, RefuseCode::from_wire);
        check(END_CODES, EndCode::as_str, EndCode::from_wire);
        // The strings on the wire today, unchanged.
        let refuse: Vec<&str> = REFUSE_CODES.iter().map(|(_, w)| *w).collect();
        assert_eq!(
            refuse,
            [
                "internal",
                "bad-grant",
                "wrong-recipient",
                "grant-expired",
                "untrusted",
                "bad-manifest",
                "grant-mismatch",
                "held-locally",
                "unknown-transfer",
                "replayed",
                "closed",
                "manifest-mismatch",
                "not-yet",
                "bad-attestation",
                "bad-open",
                "chunk-refused",
                "bad-receipt",
                "receipt-mismatch",
                "bad-object",
                "already-held",
            ]
        );
        let end: Vec<&str> = END_CODES.iter().map(|(_, w)| *w).collect();
        assert_eq!(
            end,
            [
                "not-available",
                "denied",
                "denied-by-approver",
                "burned-in",
                "refused",
                "grant-expired",
                "peer-revoked",
                "peer-blocked",
                "purpose-removed",
                "certificate-expired",
                "peer-untrusted",
                "consent-withdrawn",
                "consent-expired",
                "consent-denied",
                "level-raised",
                "scope-narrowed",
                "study-unavailable",
                "nothing-in-scope",
                "ended-by-holder",
            ]
        );
        let pending: Vec<&str> = PENDING_CODES.iter().map(|(_, w)| *w).collect();
        assert_eq!(pending, ["fetching-from-pacs"]);
    }
}
