//! `config::Config::from_toml`: the whole configuration, TOML parse and
//! validation (`wharf check-config` runs exactly this).
//! Property: no panic, whatever the text.
//! Inputs naming device or kernel files are skipped: validation reads the
//! files a config names (htpasswd, tokens, keys), and `/dev/zero` would be a
//! test of the machine, not of the parser. `$CREDENTIALS_DIRECTORY` is not set
//! by scripts/fuzz.sh.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wharf::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    // (Escapes are skipped too: `"\u002fdev"` is `/dev`.)
    if ["/dev", "/proc", "/sys", "..", "\\u", "\\U"]
        .iter()
        .any(|p| s.contains(p))
    {
        return;
    }
    let _ = Config::from_toml(s, None);
});
