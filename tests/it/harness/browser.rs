//! A real browser: Debian's headless Chromium, run in an isolated network
//! namespace ([`Netns::isolated`]) whose only way out is a relay to the page
//! under test, so nothing the page asks for can load from anywhere else;
//! [`external_refs`] says whether the page asked for anything elsewhere.
//! (Chromium's own background requests, its component updater and network
//! time, fail there too; they are Chromium's, not the page's.)
//!
//! One Chromium process per visit (`--dump-dom` or `--screenshot`, a second
//! or two each), one at a time (a lock): the suite's heavy tests already
//! share the 2 cores.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use super::{require, Netns};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The port the page is reached at inside the namespace (127.0.0.1 there).
const PORT: u16 = 8080;

pub struct Browser {
    ns: Netns,
    dir: tempfile::TempDir,
    visits: usize,
}

/// What one visit left: the serialized DOM (for `--dump-dom`) and
/// Chromium's console and log lines.
pub struct Visit {
    pub dom: String,
    pub log: String,
}

impl Browser {
    /// A browser whose only reachable server is `target`, seen as
    /// `http://127.0.0.1:8080`.
    pub fn open(target: SocketAddr) -> Browser {
        require(&["chromium", "socat"]);
        let dir = tempfile::tempdir().unwrap();
        let mut ns = Netns::isolated();
        ns.relay_at("127.0.0.1", PORT, target, dir.path());
        Browser { ns, dir, visits: 0 }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{PORT}{path}")
    }

    /// The page at `path` as Chromium built it, after its scripts ran.
    pub fn dom(&mut self, path: &str) -> Visit {
        self.visit(path, &["--dump-dom"], false)
    }

    /// A PNG of the page at `path` in a `width`×`height` window, light or
    /// dark (`prefers-color-scheme`).
    pub fn screenshot(
        &mut self,
        path: &str,
        png: &Path,
        width: u32,
        height: u32,
        dark: bool,
    ) -> Visit {
        let shot = format!("--screenshot={}", png.display());
        let size = format!("--window-size={width},{height}");
        self.visit(path, &[&shot, &size], dark)
    }

    fn visit(&mut self, path: &str, args: &[&str], dark: bool) -> Visit {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        self.visits += 1;
        let profile = self.dir.path().join(format!("profile-{}", self.visits));
        let mut c: Command = self.ns.command("timeout");
        c.args([
            "60",
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
        ])
        .args([
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
        ])
        .args([
            "--disable-background-networking",
            "--disable-component-update",
        ])
        .args([
            "--disable-sync",
            "--disable-domain-reliability",
            "--no-pings",
        ])
        .args(["--hide-scrollbars", "--force-device-scale-factor=1"])
        .args([
            "--virtual-time-budget=3000",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()));
        if dark {
            c.arg("--blink-settings=preferredColorScheme=0");
        } else {
            c.arg("--blink-settings=preferredColorScheme=1");
        }
        c.args(args).arg(self.url(path));
        let out = c.output().unwrap();
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "chromium {path}: {log}");
        Visit {
            dom: String::from_utf8_lossy(&out.stdout).into_owned(),
            log,
        }
    }

    /// Where a test keeps what it wants looked at: `target/test-artifacts/<what>`.
    pub fn artifacts(what: &str) -> PathBuf {
        let d = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target/test-artifacts")
            .join(what);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}

/// Every URL attribute of `dom` that points at another origin than
/// `origin` (`http://host:port`): what the page would load from elsewhere.
pub fn external_refs(dom: &str, origin: &str) -> Vec<String> {
    let mut out = Vec::new();
    for attr in [
        "src=\"",
        "href=\"",
        "action=\"",
        "srcset=\"",
        "poster=\"",
        "data=\"",
        "xlink:href=\"",
    ] {
        let mut rest = dom;
        while let Some(i) = rest.find(attr) {
            rest = &rest[i + attr.len()..];
            let end = rest.find('"').unwrap_or(rest.len());
            let v = &rest[..end];
            let elsewhere = v.starts_with("//") || (v.contains("://") && !v.starts_with(origin));
            if elsewhere {
                out.push(v.to_owned());
            }
        }
    }
    out
}

/// The PNG's width and height (from its IHDR chunk).
pub fn png_size(png: &Path) -> (u32, u32) {
    let b = std::fs::read(png).unwrap();
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "{} is no PNG", png.display());
    let be = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}
