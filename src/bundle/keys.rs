//! Bundle signing keys: ed25519 key pairs, key ids, and a sequence number per
//! key so a site can refuse an older bundle from the same key.
//!
//! Files (JSON, one object each):
//! - `NAME.key`: `{"format":"wharf-bundle-key/1","key_id":..,"ed25519_seed":..}`,
//!   mode 0600; a key readable by group or others is refused on load.
//! - `NAME.pub`: `{"format":"wharf-bundle-pub/1","key_id":..,"ed25519":..}`,
//!   the 32-byte public key in base64; this is what sites list in
//!   `trusted_keys`.
//! - `NAME.key.seq`: the last sequence number handed out, next to the private
//!   key. It must travel with the key: a key moved without it starts again
//!   at 1 and the site will see rollbacks.
//!
//! The key id is the first 16 hex characters of sha256(public key bytes), so
//! a site can name the key a bundle was signed with without holding it.

use std::fmt;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::BundleError;

const KEY_FORMAT: &str = "wharf-bundle-key/1";
const PUB_FORMAT: &str = "wharf-bundle-pub/1";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    format: String,
    key_id: String,
    ed25519_seed: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PubFile {
    format: String,
    key_id: String,
    ed25519: String,
}

/// First 16 hex characters of sha256 of the 32 public key bytes.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// A private key loaded from its file; the file's path locates the sequence
/// file.
pub struct SigningKeyFile {
    path: PathBuf,
    key: SigningKey,
    key_id: String,
}

impl fmt::Debug for SigningKeyFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeyFile")
            .field("path", &self.path)
            .field("key_id", &self.key_id)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl SigningKeyFile {
    pub fn key_id(&self) -> &str {
        &self.key_id
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            key: self.key.verifying_key(),
            key_id: self.key_id.clone(),
        }
    }
    /// base64 of the ed25519 signature of `msg`.
    pub(crate) fn sign(&self, msg: &[u8]) -> String {
        B64.encode(self.key.sign(msg).to_bytes())
    }
    /// `NAME.key.seq` beside the key file.
    pub fn sequence_path(&self) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(".seq");
        PathBuf::from(p)
    }

    /// Hands out the next sequence number for this key: read, increment and
    /// write the sequence file under an exclusive `flock`, fsynced before the
    /// lock is released, so two creates never share a number and a number
    /// once used is never handed out again after a crash.
    pub fn next_sequence(&self) -> Result<u64, BundleError> {
        let path = self.sequence_path();
        let io = BundleError::io(&path);
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(BundleError::io(&path))?;
        // SAFETY: flock on a descriptor we own; released when `f` closes.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io(std::io::Error::last_os_error()));
        }
        let mut text = String::new();
        f.read_to_string(&mut text)
            .map_err(BundleError::io(&path))?;
        let last: u64 = match text.trim() {
            "" => 0,
            t => t.parse().map_err(|_| BundleError::Key {
                path: path.clone(),
                why: format!("not a sequence number: {t:?}"),
            })?,
        };
        // Never below the clock (unix seconds): a key copied to a new
        // machine without its `.seq` file still numbers its bundles above
        // every earlier one, instead of restarting at 1 and being refused as
        // a rollback by every site.
        let next = (last + 1).max(crate::cache::now_secs());
        f.rewind().map_err(BundleError::io(&path))?;
        f.set_len(0).map_err(BundleError::io(&path))?;
        f.write_all(format!("{next}\n").as_bytes())
            .map_err(BundleError::io(&path))?;
        f.sync_all().map_err(BundleError::io(&path))?;
        if let Some(dir) = path.parent() {
            sync_dir(dir)?;
        }
        Ok(next)
    }
}

/// A public key a site trusts.
#[derive(Clone, Debug)]
pub struct PublicKey {
    key: VerifyingKey,
    key_id: String,
}

impl PublicKey {
    pub fn key_id(&self) -> &str {
        &self.key_id
    }
    /// Checks a base64 signature of `msg` (strict: no malleable signatures,
    /// no weak keys).
    pub(crate) fn verify(&self, msg: &[u8], sig_b64: &str) -> bool {
        let Ok(bytes) = B64.decode(sig_b64) else {
            return false;
        };
        let Ok(sig) = ed25519_dalek::Signature::from_slice(&bytes) else {
            return false;
        };
        self.key.verify_strict(msg, &sig).is_ok()
    }
}

/// Writes `DIR/NAME.key` (0600) and `DIR/NAME.pub`; refuses to overwrite
/// either. Returns both paths and the key id.
pub fn keygen(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf, String), BundleError> {
    let valid = !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !valid {
        return Err(BundleError::Refused {
            path: dir.join(name),
            why: "a key name is letters, digits, '.', '_' and '-', not starting with '.'".into(),
        });
    }
    let key_path = dir.join(format!("{name}.key"));
    let pub_path = dir.join(format!("{name}.pub"));
    for p in [&key_path, &pub_path] {
        if p.symlink_metadata().is_ok() {
            return Err(BundleError::Refused {
                path: p.clone(),
                why: "exists; a key is never overwritten (move it away first)".into(),
            });
        }
    }
    std::fs::create_dir_all(dir).map_err(BundleError::io(dir))?;
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::getrandom(&mut seed[..]).map_err(|e| BundleError::Key {
        path: key_path.clone(),
        why: format!("no randomness from the OS: {e}"),
    })?;
    let key = SigningKey::from_bytes(&seed);
    let id = key_id(&key.verifying_key());
    let private = zeroize::Zeroizing::new(
        serde_json::to_string_pretty(&KeyFile {
            format: KEY_FORMAT.into(),
            key_id: id.clone(),
            ed25519_seed: B64.encode(&seed[..]),
        })
        .expect("serializes")
            + "\n",
    );
    let public = serde_json::to_string_pretty(&PubFile {
        format: PUB_FORMAT.into(),
        key_id: id.clone(),
        ed25519: B64.encode(key.verifying_key().as_bytes()),
    })
    .expect("serializes")
        + "\n";
    write_new(&key_path, private.as_bytes(), 0o600)?;
    write_new(&pub_path, public.as_bytes(), 0o644)?;
    sync_dir(dir)?;
    Ok((key_path, pub_path, id))
}

/// Loads a private key, refusing a file group or others can read.
pub fn load_signing_key(path: &Path) -> Result<SigningKeyFile, BundleError> {
    let meta = std::fs::metadata(path).map_err(BundleError::io(path))?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(BundleError::Key {
            path: path.into(),
            why: format!(
                "readable by group or others (mode {:o}); chmod 600 it",
                mode & 0o777
            ),
        });
    }
    let text =
        zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(BundleError::io(path))?);
    let bad = |why: String| BundleError::Key {
        path: path.into(),
        why,
    };
    let file: KeyFile = serde_json::from_str(&text)
        .map_err(|e| bad(format!("not a wharf bundle private key: {e}")))?;
    if file.format != KEY_FORMAT {
        return Err(bad(format!(
            "format {:?}, expected {KEY_FORMAT:?}",
            file.format
        )));
    }
    let seed = zeroize::Zeroizing::new(
        B64.decode(&file.ed25519_seed)
            .map_err(|e| bad(format!("ed25519_seed: {e}")))?,
    );
    let seed: &[u8; 32] = seed
        .as_slice()
        .try_into()
        .map_err(|_| bad(format!("ed25519_seed: {} bytes, expected 32", seed.len())))?;
    let key = SigningKey::from_bytes(seed);
    let id = key_id(&key.verifying_key());
    if id != file.key_id {
        return Err(bad(format!(
            "key_id {} does not match the key (its id is {id})",
            file.key_id
        )));
    }
    Ok(SigningKeyFile {
        path: path.into(),
        key,
        key_id: id,
    })
}

/// Loads a public key (`NAME.pub`), checking its key id.
pub fn load_public_key(path: &Path) -> Result<PublicKey, BundleError> {
    let text = std::fs::read_to_string(path).map_err(BundleError::io(path))?;
    let bad = |why: String| BundleError::Key {
        path: path.into(),
        why,
    };
    let file: PubFile = serde_json::from_str(&text)
        .map_err(|e| bad(format!("not a wharf bundle public key: {e}")))?;
    if file.format != PUB_FORMAT {
        return Err(bad(format!(
            "format {:?}, expected {PUB_FORMAT:?}",
            file.format
        )));
    }
    let bytes = B64
        .decode(&file.ed25519)
        .map_err(|e| bad(format!("ed25519: {e}")))?;
    let bytes: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| bad(format!("ed25519: {} bytes, expected 32", bytes.len())))?;
    let key = VerifyingKey::from_bytes(&bytes).map_err(|e| bad(format!("ed25519: {e}")))?;
    let id = key_id(&key);
    if id != file.key_id {
        return Err(bad(format!(
            "key_id {} does not match the key (its id is {id})",
            file.key_id
        )));
    }
    Ok(PublicKey { key, key_id: id })
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), BundleError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(BundleError::io(path))?;
    f.write_all(bytes).map_err(BundleError::io(path))?;
    f.sync_all().map_err(BundleError::io(path))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), BundleError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(BundleError::io(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_a_pair_that_signs_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let (k, p, id) = keygen(dir.path(), "site").unwrap();
        assert_eq!(k, dir.path().join("site.key"));
        assert_eq!(id.len(), 16);
        let mode = std::fs::metadata(&k).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let sk = load_signing_key(&k).unwrap();
        let pk = load_public_key(&p).unwrap();
        assert_eq!(sk.key_id(), id);
        assert_eq!(pk.key_id(), id);
        let sig = sk.sign(b"hello");
        assert!(pk.verify(b"hello", &sig));
        assert!(!pk.verify(b"hellp", &sig));
        assert!(!pk.verify(b"hello", "not base64!"));
        assert!(!format!("{sk:?}").contains(&B64.encode(sk.key.to_bytes())));
    }

    #[test]
    fn keygen_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        keygen(dir.path(), "k").unwrap();
        let before = std::fs::read(dir.path().join("k.key")).unwrap();
        let e = keygen(dir.path(), "k").unwrap_err().to_string();
        assert!(e.contains("k.key") && e.contains("exists"), "{e}");
        assert_eq!(std::fs::read(dir.path().join("k.key")).unwrap(), before);
        // A lone .pub blocks too: the pair would not match.
        std::fs::remove_file(dir.path().join("k.key")).unwrap();
        let e = keygen(dir.path(), "k").unwrap_err().to_string();
        assert!(e.contains("k.pub"), "{e}");
        assert!(keygen(dir.path(), "../x").is_err());
    }

    #[test]
    fn a_private_key_others_can_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (k, _, _) = keygen(dir.path(), "k").unwrap();
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_signing_key(&k).unwrap_err().to_string();
        assert!(e.contains("k.key") && e.contains("mode 644"), "{e}");
    }

    #[test]
    fn a_public_key_with_the_wrong_id_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_, p, id) = keygen(dir.path(), "k").unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        std::fs::write(&p, text.replace(&id, "0000000000000000")).unwrap();
        let e = load_public_key(&p).unwrap_err().to_string();
        assert!(e.contains("does not match"), "{e}");
    }

    #[test]
    fn sequence_numbers_increase_and_are_never_shared() {
        let dir = tempfile::tempdir().unwrap();
        let (k, _, _) = keygen(dir.path(), "k").unwrap();
        let sk = load_signing_key(&k).unwrap();
        let before = crate::cache::now_secs();
        let first = sk.next_sequence().unwrap();
        assert!(first >= before, "never below the clock: {first} < {before}");
        assert_eq!(sk.next_sequence().unwrap(), first + 1);
        // Concurrent takers (each with its own open file, as two processes
        // would have) never get the same number.
        let got: Vec<u64> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| {
                    let k = k.clone();
                    s.spawn(move || {
                        let sk = load_signing_key(&k).unwrap();
                        (0..10)
                            .map(|_| sk.next_sequence().unwrap())
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        let mut sorted = got.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, (first + 2..=first + 81).collect::<Vec<u64>>());
        assert_eq!(
            std::fs::read_to_string(sk.sequence_path()).unwrap(),
            format!("{}\n", first + 81)
        );
        // The `.seq` file lost (a key moved without it): still above.
        std::fs::remove_file(sk.sequence_path()).unwrap();
        assert!(sk.next_sequence().unwrap() >= before);
    }
}
