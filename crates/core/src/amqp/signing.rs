//! Signing with the pool key (`[general] pool_key`): whoever may publish to the registrations
//! or the state exchange could otherwise point any phone's calls elsewhere with one forged
//! message. With a key set, every message a node publishes there (SYNC answers sent straight
//! to the asker's queue included) carries
//!
//! ```text
//! x-res-scale-signature: v1=<HMAC-SHA256(key, body), 64 lowercase hex digits>
//! ```
//!
//! as an AMQP header (a long string), the key being the bytes of `pool_key` as written in
//! res_scale.conf and the body the exact bytes of the message. `v1=` names the scheme, so that
//! another can follow without ambiguity. A receiver accepts a message that `pool_key` or
//! `pool_key_accepted` (the second key of a rotation, never used to sign) verifies; every other
//! message is refused by the subsystem that reads it, which alone knows whether an unsigned
//! one may pass (registrations from `[registrations] unsigned_origins`, see [`admits_unsigned`]).
//!
//! The comparison is the hmac crate's `verify_slice`, in constant time: how long a refusal
//! takes tells nothing about how close a forgery came.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::Secret;

/// The AMQP header that carries the signature.
pub const HEADER: &str = "x-res-scale-signature";
/// The scheme of the signatures made and accepted: HMAC-SHA256 in hex.
const SCHEME: &str = "v1=";

type HmacSha256 = Hmac<Sha256>;

/// What a receiver found about one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signature {
    /// No pool key is set: nothing is signed or checked.
    NotChecked,
    /// Made with `pool_key` or `pool_key_accepted` over this very body.
    Verified,
    /// No signature header.
    Missing,
    /// A signature no key verifies: another key, an altered body, or not of the `v1=` form.
    Invalid,
}

impl Signature {
    /// Why a message with this signature may not be applied as it is: the reason it is counted
    /// under and the words of the log line; `None` when it may (no key set, or verified).
    pub fn refusal(self) -> Option<(&'static str, &'static str)> {
        match self {
            Signature::NotChecked | Signature::Verified => None,
            Signature::Missing => Some(("unsigned", "no x-res-scale-signature header, and this node has a pool key")),
            Signature::Invalid => Some(("bad_signature", "its x-res-scale-signature verifies with neither pool_key nor pool_key_accepted (another key, or an altered body)")),
        }
    }
}

/// The keys of a node: the one it signs with, and the ones it accepts.
#[derive(Clone)]
pub struct PoolKeys {
    signing: HmacSha256,
    accepted: Option<HmacSha256>,
}

impl std::fmt::Debug for PoolKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PoolKeys(****, {} accepted)", if self.accepted.is_some() { 2 } else { 1 })
    }
}

fn mac(key: &Secret) -> HmacSha256 {
    // HMAC takes keys of any length (longer ones are hashed first).
    HmacSha256::new_from_slice(key.expose().as_bytes()).expect("HMAC accepts keys of any length")
}

impl PoolKeys {
    /// The keys of `[general]`; `None` when `pool_key` is not set (nothing is signed).
    pub fn from_config(general: &crate::config::General) -> Option<PoolKeys> {
        let signing = general.pool_key.as_ref()?;
        Some(PoolKeys { signing: mac(signing), accepted: general.pool_key_accepted.as_ref().map(mac) })
    }

    /// The header value for `body`.
    pub fn sign(&self, body: &[u8]) -> String {
        let mut mac = self.signing.clone();
        mac.update(body);
        format!("{SCHEME}{}", hex(&mac.finalize().into_bytes()))
    }

    /// Checks the header value (`None`: absent) against `body`.
    pub fn check(&self, body: &[u8], header: Option<&str>) -> Signature {
        let Some(header) = header else { return Signature::Missing };
        let Some(tag) = header.strip_prefix(SCHEME).and_then(unhex) else { return Signature::Invalid };
        let verifies = |key: &HmacSha256| {
            let mut mac = key.clone();
            mac.update(body);
            mac.verify_slice(&tag).is_ok()
        };
        if verifies(&self.signing) || self.accepted.as_ref().is_some_and(verifies) {
            Signature::Verified
        } else {
            Signature::Invalid
        }
    }
}

/// Whether an unsigned message from `origin` may pass: `[registrations] unsigned_origins`
/// names registrars that cannot sign (Kamailio's rabbitmq module sets no headers). A name
/// stands for itself and for itself followed by `-` and anything: Kamailio's origin is its
/// registrar id plus `-<start time>`.
pub fn admits_unsigned(unsigned_origins: &[String], origin: &str) -> bool {
    unsigned_origins.iter().any(|name| origin == name || origin.strip_prefix(name.as_str()).is_some_and(|rest| rest.starts_with('-')))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 32 bytes from 64 hex digits (either case); `None` for anything else.
fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::General;

    fn keys(signing: &str, accepted: Option<&str>) -> PoolKeys {
        let general = General { pool_key: Some(Secret::new(signing)), pool_key_accepted: accepted.map(Secret::new), ..Default::default() };
        PoolKeys::from_config(&general).unwrap()
    }

    const BODY: &[u8] = br#"{"type":"ANNOUNCE","aor":"alice","origin":"n1","seq":1}"#;

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body_in_hex() {
        // RFC 4231, test case 2.
        let k = keys("Jefe", None);
        assert_eq!(k.sign(b"what do ya want for nothing?"), "v1=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn a_good_signature_verifies() {
        let k = keys("pool-key-one-0123456789", None);
        assert_eq!(k.check(BODY, Some(&k.sign(BODY))), Signature::Verified);
        assert_eq!(k.check(BODY, Some(&k.sign(BODY).to_uppercase().replacen("V1=", "v1=", 1))), Signature::Verified, "hex digits in either case");
    }

    #[test]
    fn a_signature_of_another_key_is_invalid() {
        let other = keys("another-key-0123456789", None);
        assert_eq!(keys("pool-key-one-0123456789", None).check(BODY, Some(&other.sign(BODY))), Signature::Invalid);
    }

    #[test]
    fn the_accepted_key_verifies_but_never_signs() {
        let (old, new) = ("old-key-0123456789abcdef", "new-key-0123456789abcdef");
        let rotating = keys(new, Some(old));
        assert_eq!(rotating.check(BODY, Some(&keys(old, None).sign(BODY))), Signature::Verified, "a node still on the old key");
        assert_eq!(rotating.check(BODY, Some(&keys(new, None).sign(BODY))), Signature::Verified);
        assert_eq!(rotating.sign(BODY), keys(new, None).sign(BODY));
        assert_eq!(keys(new, None).check(BODY, Some(&keys(old, None).sign(BODY))), Signature::Invalid, "once the old key is gone");
    }

    #[test]
    fn an_altered_body_is_invalid() {
        let k = keys("pool-key-one-0123456789", None);
        let signature = k.sign(BODY);
        let altered = String::from_utf8(BODY.to_vec()).unwrap().replace("alice", "mallory");
        assert_eq!(k.check(altered.as_bytes(), Some(&signature)), Signature::Invalid);
    }

    #[test]
    fn a_missing_or_malformed_signature_is_refused() {
        let k = keys("pool-key-one-0123456789", None);
        let good = k.sign(BODY);
        assert_eq!(k.check(BODY, None), Signature::Missing);
        for bad in ["", "v1=", "v2=00", &good[3..], &good.replace("v1=", "v2="), &good[..good.len() - 2], &format!("{good}00"), &good.replacen('0', "g", 1), "v1=ééééééééééééééééééééééééééééééééé"]
        {
            assert_eq!(k.check(BODY, Some(bad)), Signature::Invalid, "{bad:?}");
        }
        assert_eq!(Signature::Missing.refusal().map(|r| r.0), Some("unsigned"));
        assert_eq!(Signature::Invalid.refusal().map(|r| r.0), Some("bad_signature"));
        assert_eq!((Signature::Verified.refusal(), Signature::NotChecked.refusal()), (None, None));
    }

    #[test]
    fn no_key_means_no_keys() {
        assert!(PoolKeys::from_config(&General::default()).is_none());
    }

    #[test]
    fn unsigned_origins_match_a_registrar_id_and_its_runs() {
        let trusted = vec!["kamailio".to_string(), "edge.1".to_string()];
        for origin in ["kamailio", "kamailio-1764633000", "edge.1", "edge.1-x"] {
            assert!(admits_unsigned(&trusted, origin), "{origin}");
        }
        for origin in ["kamailiox", "kamailio_1", "kam", "02:00:00:00:00:01", "", "edge.10"] {
            assert!(!admits_unsigned(&trusted, origin), "{origin}");
        }
        assert!(!admits_unsigned(&[], "kamailio"), "off by default");
    }

    #[test]
    fn debug_output_hides_the_keys() {
        let text = format!("{:?}", keys("pool-key-one-0123456789", Some("pool-key-two-0123456789")));
        assert!(!text.contains("pool-key"), "{text}");
    }
}
