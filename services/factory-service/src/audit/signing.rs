//! RSA signatures: RSASSA-PKCS1-v1_5 with SHA-256 (deterministic, so a third party can check a
//! signature with `openssl dgst -sha256 -verify`).
//!
//! `ring` does the RSA arithmetic (constant-time private-key operations, fast verification);
//! the `rsa` crate only parses and converts PEM/DER key encodings.

use std::collections::HashMap;
use std::path::Path;

use ring::rand::SystemRandom;
use ring::signature::{
    RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256, RsaKeyPair, UnparsedPublicKey,
};
use rsa::pkcs1::{DecodeRsaPublicKey as _, EncodeRsaPublicKey as _};
use rsa::pkcs8::{
    DecodePrivateKey as _, DecodePublicKey as _, EncodePrivateKey as _, EncodePublicKey as _,
};
use rsa::{RsaPrivateKey, RsaPublicKey};
use sha2::{Digest as _, Sha256};

use super::error::AuditError;

/// The longest key id accepted (it is stored with every signed event).
pub const MAX_KEY_ID_LEN: usize = 64;

/// Whether `id` is a usable key id: 1 to 64 of `A-Z a-z 0-9 . _ -`.
pub fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_KEY_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The default key id of a public key: the first 16 hex digits of SHA-256 over its DER
/// SubjectPublicKeyInfo (`openssl pkey -pubin -outform DER | sha256sum`).
pub fn fingerprint(spki_der: &[u8]) -> String {
    hex::encode(&Sha256::digest(spki_der)[..8])
}

/// A private signing key with its id.
pub struct Signer {
    key_id: String,
    key_pair: RsaKeyPair,
    public: PublicKey,
    rng: SystemRandom,
    /// The keys this one succeeded (`AUDIT_PREVIOUS_PUBLIC_KEYS`), by key id; `Some` makes
    /// the service's own verification strict: any other key id is a break.
    previous: Option<Vec<(String, PublicKey)>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material.
        f.debug_struct("Signer")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// Why `pem` is not a PKCS#8 PEM RSA private key, in the operator's terms. The parser's own
/// words name the RSA OID when the key is of another kind, and a "NUL byte" for a file with no
/// PEM in it; the PEM label says what the file holds instead.
fn not_a_key(pem: &str, error: &rsa::pkcs8::Error) -> String {
    let label = pem
        .lines()
        .find_map(|l| l.trim().strip_prefix("-----BEGIN "))
        .and_then(|l| l.strip_suffix("-----"));
    let convert = "convert it with `openssl pkcs8 -topk8 -nocrypt -in key.pem -out key.pkcs8.pem`";
    match label {
        None => "no PEM block in the file (expected -----BEGIN PRIVATE KEY-----)".to_owned(),
        Some("RSA PRIVATE KEY") => format!("an RSA key in PKCS#1 form; {convert}"),
        Some("ENCRYPTED PRIVATE KEY") => {
            "an encrypted key; the service needs it unencrypted (PKCS#8, -nocrypt)".to_owned()
        }
        Some("PRIVATE KEY") => match error {
            // The parser names the OID it expected (RSA's), not the key's.
            rsa::pkcs8::Error::PublicKey(_) => {
                "a PKCS#8 key, but not an RSA one (EC, Ed25519, ...)".to_owned()
            }
            _ => format!("a PKCS#8 block that does not parse ({error})"),
        },
        Some(other) => format!("a PEM block of another kind ({other}), not an RSA private key"),
    }
}

/// PEM text as the parsers take it: without a byte-order mark (an editor's) or blank lines and
/// spaces around it (a secret manager's, a heredoc's), which the parsers refuse with an error
/// about the PEM boundaries.
fn pem_text(pem: &str) -> String {
    let mut text = pem.trim_start_matches('\u{feff}').trim().to_owned();
    text.push('\n');
    text
}

impl Signer {
    /// Parses a PKCS#8 PEM RSA private key (at least 2048 bits). Without `key_id`, the key's
    /// [`fingerprint`] is its id.
    pub fn from_pem(pem: &str, key_id: Option<&str>) -> Result<Self, AuditError> {
        let invalid = |reason: String| AuditError::InvalidKey {
            what: "private key".into(),
            reason,
        };
        let pem = &pem_text(pem);
        let private =
            RsaPrivateKey::from_pkcs8_pem(pem).map_err(|e| invalid(not_a_key(pem, &e)))?;
        let der = private
            .to_pkcs8_der()
            .map_err(|e| invalid(format!("cannot re-encode ({e})")))?;
        let key_pair = RsaKeyPair::from_pkcs8(der.as_bytes())
            .map_err(|e| invalid(format!("unusable for RSA signing ({e}); 2048 to 4096 bits")))?;
        let public = PublicKey::from_rsa(&private.to_public_key())?;
        let key_id = match key_id {
            Some(id) if valid_key_id(id) => id.to_owned(),
            Some(_) => {
                return Err(invalid(
                    "key id must be 1 to 64 of A-Z a-z 0-9 . _ -".into(),
                ));
            }
            None => fingerprint(&public.spki_der),
        };
        Ok(Self {
            key_id,
            key_pair,
            public,
            rng: SystemRandom::new(),
            previous: None,
        })
    }

    /// This key, knowing the public keys of the ones it succeeded: the service then verifies
    /// their signatures too, and takes any other key id for a break (`unknown_key`).
    pub fn with_previous_keys(mut self, keys: Vec<(String, PublicKey)>) -> Self {
        self.previous = Some(keys);
        self
    }

    /// The keys this one succeeded, when they were given.
    pub fn previous_keys(&self) -> Option<&[(String, PublicKey)]> {
        self.previous.as_deref()
    }

    /// Reads [`Signer::from_pem`] from a file.
    pub fn from_file(path: &Path, key_id: Option<&str>) -> Result<Self, AuditError> {
        let pem =
            common::config::read_key_file_text(path).map_err(|source| AuditError::KeyFile {
                path: path.display().to_string(),
                source,
            })?;
        Self::from_pem(&pem, key_id)
    }

    /// The key id stored next to every signature.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The matching public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// RSASSA-PKCS1-v1_5 with SHA-256 over `message`.
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, AuditError> {
        let mut signature = vec![0; self.key_pair.public().modulus_len()];
        self.key_pair
            .sign(&RSA_PKCS1_SHA256, &self.rng, message, &mut signature)
            .map_err(|e| AuditError::Signing {
                key_id: self.key_id.clone(),
                reason: e.to_string(),
            })?;
        Ok(signature)
    }
}

/// An RSA public key.
#[derive(Debug, Clone)]
pub struct PublicKey {
    /// PKCS#1 RSAPublicKey DER (what `ring` verifies with).
    pkcs1_der: Vec<u8>,
    /// SubjectPublicKeyInfo DER (what the fingerprint is taken over).
    spki_der: Vec<u8>,
}

impl PublicKey {
    fn from_rsa(key: &RsaPublicKey) -> Result<Self, AuditError> {
        let invalid = |e: String| AuditError::InvalidKey {
            what: "public key".into(),
            reason: e,
        };
        Ok(Self {
            pkcs1_der: key
                .to_pkcs1_der()
                .map_err(|e| invalid(e.to_string()))?
                .into_vec(),
            spki_der: key
                .to_public_key_der()
                .map_err(|e| invalid(e.to_string()))?
                .into_vec(),
        })
    }

    /// Parses a PEM public key: SubjectPublicKeyInfo (`BEGIN PUBLIC KEY`) or PKCS#1
    /// (`BEGIN RSA PUBLIC KEY`).
    pub fn from_pem(pem: &str) -> Result<Self, AuditError> {
        let pem = &pem_text(pem);
        let key = RsaPublicKey::from_public_key_pem(pem)
            .or_else(|_| RsaPublicKey::from_pkcs1_pem(pem))
            .map_err(|e| AuditError::InvalidKey {
                what: "public key".into(),
                reason: if pem.contains("PRIVATE KEY-----") {
                    // The likeliest mix-up, and one whose parser error says nothing useful.
                    "this is a private key; give its public half \
                     (openssl pkey -in key.pem -pubout -out key.pub.pem)"
                        .to_owned()
                } else {
                    format!(
                        "expected a PEM RSA public key (BEGIN PUBLIC KEY or BEGIN RSA PUBLIC \
                         KEY); {e}"
                    )
                },
            })?;
        Self::from_rsa(&key)
    }

    /// This key's default id (see [`fingerprint`]).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.spki_der)
    }

    /// Whether `signature` is this key's RSASSA-PKCS1-v1_5/SHA-256 signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &self.pkcs1_der)
            .verify(message, signature)
            .is_ok()
    }
}

/// How the verifier treats a key id it has no public key for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownKeys {
    /// A break ("unknown key"): the offline verifier, given the operator's keys.
    Fail,
    /// Skip the signature check (hashes are still checked): the service's own verifier, which
    /// knows only its current key and must not cry wolf after a rotation.
    Skip,
}

/// Result of checking one signature against a [`KeyRing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureCheck {
    /// Verified.
    Valid,
    /// The key id's key rejects it.
    Invalid,
    /// No key for this key id.
    UnknownKey,
    /// No key for this key id and the policy is [`UnknownKeys::Skip`].
    Skipped,
}

/// The public keys a verifier trusts. Keys given with an id verify only that id; keys given
/// without one are tried for any id they are not yet bound to and bound to the first id whose
/// signature they verify (so `--public-key new.pem --public-key old.pem` just works after a
/// rotation), and always answer for their own [`fingerprint`].
#[derive(Debug, Clone)]
pub struct KeyRing {
    named: HashMap<String, PublicKey>,
    unnamed: Vec<PublicKey>,
    policy: UnknownKeys,
    require_signatures: bool,
}

impl KeyRing {
    /// An empty ring with the given policy.
    pub fn new(policy: UnknownKeys) -> Self {
        Self {
            named: HashMap::new(),
            unnamed: Vec::new(),
            policy,
            require_signatures: false,
        }
    }

    /// Makes an unsigned version-2 event or checkpoint a break. Use it when the log is known to
    /// be signed throughout (`AUDIT_SIGN_EVENTS=true` from the start): otherwise whoever can
    /// rewrite rows could strip signatures along with their changes.
    pub fn require_signatures(mut self) -> Self {
        self.require_signatures = true;
        self
    }

    /// Whether unsigned events and checkpoints are breaks.
    pub fn signatures_required(&self) -> bool {
        self.require_signatures
    }

    /// Adds a key for one key id (`None`: for whichever id it verifies).
    pub fn add(&mut self, key_id: Option<String>, key: PublicKey) {
        match key_id {
            Some(id) => {
                self.named.insert(id, key);
            }
            None => {
                self.named.insert(key.fingerprint(), key.clone());
                self.unnamed.push(key);
            }
        }
    }

    /// Whether no key was given (then signatures are not checked at all).
    pub fn is_empty(&self) -> bool {
        self.named.is_empty() && self.unnamed.is_empty()
    }

    /// Checks `signature` of `message` by key `key_id`.
    pub fn check(&mut self, key_id: &str, message: &[u8], signature: &[u8]) -> SignatureCheck {
        if let Some(key) = self.named.get(key_id) {
            return if key.verify(message, signature) {
                SignatureCheck::Valid
            } else {
                SignatureCheck::Invalid
            };
        }
        if let Some(i) = self
            .unnamed
            .iter()
            .position(|k| k.verify(message, signature))
        {
            // Bind the key to this id: later signatures of the id must verify with it.
            let key = self.unnamed.swap_remove(i);
            self.named.insert(key_id.to_owned(), key);
            return SignatureCheck::Valid;
        }
        match self.policy {
            UnknownKeys::Fail => SignatureCheck::UnknownKey,
            UnknownKeys::Skip => SignatureCheck::Skipped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_key_given_as_a_public_one_is_named_as_such() {
        let private = include_str!("../../tests/fixtures/audit_k1.pem");
        let e = PublicKey::from_pem(private).err().map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some(
                "invalid RSA key (public key): this is a private key; give its public half \
                 (openssl pkey -in key.pem -pubout -out key.pub.pem)"
            )
        );
        let e = PublicKey::from_pem("not a key")
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|e| e.starts_with(
                "invalid RSA key (public key): expected a PEM RSA public key (BEGIN PUBLIC KEY \
                 or BEGIN RSA PUBLIC KEY); "
            )),
            "{e:?}"
        );
        assert!(PublicKey::from_pem(include_str!("../../tests/fixtures/audit_k1.pub.pem")).is_ok());
    }

    /// A key file of the wrong kind was explained in the parser's words: an EC key as an
    /// "unsupported algorithm OID" naming RSA's own OID, a file without PEM as a "NUL byte".
    /// The PEM label now says what the file holds, and how to convert a PKCS#1 key.
    #[test]
    fn a_private_key_of_the_wrong_kind_is_named_as_such() -> Result<(), String> {
        use rsa::pkcs1::EncodeRsaPrivateKey as _;
        // A throwaway P-256 key (openssl genpkey -algorithm EC), used for nothing else.
        const EC: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgJsWUFQ1HnUXAdBxI
kU+ZjJFFgFWWOgMK/g4bUNS76w+hRANCAARe35z15SgKf5krUcMmDjeYlICxOMsd
XTvp7/eUTVvmkSTYPkjM6Qu+6vOtb2+8kl4U6R+EFqls8vGzqXkYfUxE
-----END PRIVATE KEY-----
";
        let k1 = include_str!("../../tests/fixtures/audit_k1.pem");
        let pkcs1 = RsaPrivateKey::from_pkcs8_pem(k1)
            .and_then(|k| {
                k.to_pkcs1_pem(rsa::pkcs8::LineEnding::LF)
                    .map_err(rsa::pkcs8::Error::from)
            })
            .map_err(|e| e.to_string())?;
        let refused = |pem: &str| match Signer::from_pem(pem, Some("k")) {
            Ok(_) => "accepted".to_owned(),
            Err(e) => e.to_string(),
        };
        for (pem, said) in [
            (EC, "a PKCS#8 key, but not an RSA one"),
            (
                pkcs1.as_str(),
                "an RSA key in PKCS#1 form; convert it with `openssl pkcs8",
            ),
            ("just some text\n", "no PEM block in the file"),
        ] {
            let message = refused(pem);
            if !message.contains(said) || message.contains("1.2.840.113549") {
                return Err(message);
            }
        }
        Signer::from_pem(k1, Some("k"))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// `AUDIT_SIGNING_KEY_FILE=/dev/zero` is refused, not read for ever.
    #[test]
    #[cfg(unix)]
    fn a_key_file_that_is_not_one_is_not_read_for_ever() {
        let e = Signer::from_file(Path::new("/dev/zero"), Some("k"))
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("larger than 64 KiB")),
            "{e:?}"
        );
    }

    /// A key file with a blank line or spaces after it (a heredoc, a secret manager), or a
    /// byte-order mark before it (an editor), is the same key; the parsers alone refused it
    /// with "PEM error in pre-encapsulation boundary".
    #[test]
    fn keys_framed_by_blank_lines_spaces_or_a_byte_order_mark_are_read() -> Result<(), String> {
        let private = include_str!("../../tests/fixtures/audit_k1.pem");
        let public = include_str!("../../tests/fixtures/audit_k1.pub.pem");
        for frame in [
            |k: &str| format!("{k}\n\n"),
            |k: &str| format!("{k}   \n"),
            |k: &str| format!("\u{feff}{k}"),
            |k: &str| format!("\r\n{}\r\n\r\n", k.replace('\n', "\r\n")),
        ] {
            let signer =
                Signer::from_pem(&frame(private), Some("k1")).map_err(|e| e.to_string())?;
            let key = PublicKey::from_pem(&frame(public)).map_err(|e| e.to_string())?;
            if key.fingerprint() != signer.public_key().fingerprint() {
                return Err("another key".into());
            }
        }
        Ok(())
    }
}
