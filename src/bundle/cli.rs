//! `wharf bundle keygen|verify|extract`: arguments and the commands that
//! need no cache. (`create` and `import` live with the code that opens the
//! cache.) Like `admin::client`, these return `anyhow` errors for `main` to
//! print.

use std::path::PathBuf;

use anyhow::Context;

use super::{extract, keygen, load_public_key, verify, BundleDoc, PublicKey};

#[derive(clap::Subcommand)]
pub enum BundleCommand {
    /// Make an ed25519 key pair for signing bundles: OUT/NAME.key (private,
    /// mode 0600: it stays on the connected side) and OUT/NAME.pub (for the
    /// site's `[bundle] trusted_keys`). The first `bundle create` adds
    /// NAME.key.seq beside the key, its bundles' sequence numbers (never
    /// below the clock, so a key moved without it still counts upwards).
    Keygen {
        #[arg(long)]
        out: PathBuf,
        name: String,
    },
    /// Write a bundle of what the cache holds: the refs of sync rules' last
    /// runs and/or named images, leaving out what the site's inventory (or
    /// earlier bundles) has. Through the running server if one holds the
    /// cache.
    Create {
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// An empty or absent directory.
        #[arg(long)]
        out: PathBuf,
        /// A sync rule whose last run's refs go in; repeatable.
        #[arg(long = "sync", value_name = "RULE")]
        sync: Vec<String>,
        /// UPSTREAM/REPOSITORY:TAG the cache holds; repeatable.
        #[arg(long = "image", value_name = "REF")]
        images: Vec<String>,
        /// The site's `wharf inventory export`: its blobs are left out.
        #[arg(long, value_name = "INVENTORY.json")]
        against: Option<PathBuf>,
        /// An earlier bundle's bundle.json whose blobs are left out (for a
        /// one-way link); repeatable.
        #[arg(long, value_name = "BUNDLE.json")]
        since: Vec<PathBuf>,
        /// Largest volume file (e.g. 4GiB, 700MiB).
        #[arg(long, default_value = "4GiB")]
        volume_size: String,
        /// Sign with this private key (from `wharf bundle keygen`).
        #[arg(long, value_name = "FILE")]
        sign_key: Option<PathBuf>,
        /// Progress as JSON lines on stderr (also the default when stderr is
        /// not a terminal) and the result as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Import a bundle into the cache: checked first (signature against
    /// `[bundle] trusted_keys`, files, required content, rollbacks, room),
    /// then every blob verified as it is written, tags moved last. Re-run
    /// an interrupted import to resume it.
    Import {
        #[arg(long, short)]
        config: Option<PathBuf>,
        dir: PathBuf,
        /// Map an upstream name of the bundle to one of this site's:
        /// BUNDLE-NAME=SITE-NAME; repeatable.
        #[arg(long = "map", value_name = "FROM=TO")]
        map: Vec<String>,
        /// Let tags move back to an older bundle's digests from the same key.
        #[arg(long)]
        allow_rollback: bool,
        #[arg(long)]
        json: bool,
    },
    /// Check a bundle without importing it: signature, each volume's size and
    /// sha256, every blob and part, and that every manifest's content is
    /// carried or required.
    Verify {
        dir: PathBuf,
        /// A public key (NAME.pub) to accept signatures from; repeatable.
        /// With any, the bundle must be signed by one of them.
        #[arg(long = "trusted-key", value_name = "FILE")]
        trusted_keys: Vec<PathBuf>,
        /// Also trust the keys of this configuration's `[bundle] trusted_keys`.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Write the bundle's OCI image layout into OUT (split blobs joined, every
    /// blob checked against its digest), for `skopeo copy oci:OUT:REF ...`.
    Extract {
        dir: PathBuf,
        out: PathBuf,
        /// As for `verify`: with any, the bundle must be signed by one of them.
        #[arg(long = "trusted-key", value_name = "FILE")]
        trusted_keys: Vec<PathBuf>,
    },
}

/// Runs the commands that need no cache (`create` and `import` are run by
/// `main` through `admin::client`). `config_keys`: the trusted keys of the
/// configuration, when `--config` was given.
pub fn run(cmd: BundleCommand, config_keys: Vec<PathBuf>) -> anyhow::Result<()> {
    match cmd {
        BundleCommand::Create { .. } | BundleCommand::Import { .. } => {
            anyhow::bail!("bundle create and import run through the cache (admin::client)")
        }
        BundleCommand::Keygen { out, name } => {
            let (key, public, id) = keygen(&out, &name)?;
            println!("key id {id}");
            println!("private key: {} (keep it secret)", key.display());
            println!(
                "public key:  {} (list it in the site's [bundle] trusted_keys)",
                public.display()
            );
            Ok(())
        }
        BundleCommand::Verify {
            dir,
            mut trusted_keys,
            ..
        } => {
            trusted_keys.extend(config_keys);
            let trusted = load_keys(&trusted_keys)?;
            let doc = verify(&dir, &trusted, !trusted.is_empty())
                .with_context(|| format!("bundle {} refused", dir.display()))?;
            print!("{}", summary(&doc, !trusted.is_empty()));
            println!("bundle OK");
            Ok(())
        }
        BundleCommand::Extract {
            dir,
            out,
            trusted_keys,
        } => {
            let trusted = load_keys(&trusted_keys)?;
            let doc = extract(&dir, &out, &trusted, !trusted.is_empty())
                .with_context(|| format!("cannot extract bundle {}", dir.display()))?;
            print!("{}", summary(&doc, !trusted.is_empty()));
            for r in doc.refs.iter().filter(|r| doc.blob(&r.digest).is_some()) {
                println!("oci:{}:{}", out.display(), r.name());
            }
            let absent = doc
                .refs
                .iter()
                .filter(|r| doc.blob(&r.digest).is_none())
                .count();
            if absent > 0 {
                println!(
                    "{absent} ref(s) not in the layout: their manifests are not in this bundle (made --against an inventory or --since an earlier bundle, it carries only what the site lacked)"
                );
            }
            Ok(())
        }
    }
}

/// Loads trusted public keys; wiring `[bundle] trusted_keys` from the config
/// ends here too.
pub fn load_keys(paths: &[PathBuf]) -> anyhow::Result<Vec<PublicKey>> {
    paths
        .iter()
        .map(|p| load_public_key(p).map_err(anyhow::Error::from))
        .collect()
}

/// What an operator reads after verify or extract.
pub fn summary(doc: &BundleDoc, signature_checked: bool) -> String {
    let signed = match (&doc.key_id, signature_checked) {
        (None, _) => "unsigned".to_owned(),
        (Some(k), true) => format!("signed by trusted key {k}, sequence {}", doc.sequence),
        (Some(k), false) => format!(
            "signed by key {k}, sequence {} (not checked: no trusted keys given)",
            doc.sequence
        ),
    };
    let mut s = format!("bundle {} created {}: {signed}\n", doc.id, doc.created);
    s += &format!(
        "{} refs, {} blobs ({} bytes) in {} volumes; {} digests required at the site, {} index children filtered out\n",
        doc.refs.len(),
        doc.blobs.len(),
        doc.blob_bytes(),
        doc.volumes.len(),
        doc.requires.len(),
        doc.filtered.len()
    );
    for r in &doc.refs {
        s += &format!("  {} -> {}\n", r.name(), r.digest);
    }
    s
}
