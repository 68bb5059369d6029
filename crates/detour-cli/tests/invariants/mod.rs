//! The config-loading invariants the fuzz target `config` (`fuzz/`) and the
//! proptest harness (`tests/config_properties.rs`) both check, written once:
//! the fuzz target includes this file by path. Panics when one breaks.

use detour_cli::app::config::Config;
use detour_server::ServerConfig;

/// Any text through the binary's `Config::from_toml` and the library's
/// `ServerConfig::from_toml`:
/// - neither panics;
/// - an accepted config validates again to the same config (validation is
///   idempotent: what it fills in, it accepts);
/// - the two loaders agree on `[server]`: when the binary accepts a file,
///   the library accepts it too and reads the same server config.
pub fn config(text: &str) {
    let server = ServerConfig::from_toml(text);
    if let Ok(s) = &server {
        let again = s
            .clone()
            .validate()
            .expect("an accepted [server] re-validates");
        assert_eq!(format!("{again:?}"), format!("{s:?}"));
    }
    let Ok(config) = Config::from_toml(text, None) else {
        return;
    };
    let again = config
        .clone()
        .validate()
        .unwrap_or_else(|e| panic!("an accepted config no longer validates: {e}"));
    assert_eq!(format!("{again:?}"), format!("{config:?}"));
    // What `--dump-config` prints loads again, and prints the same.
    let dump = detour_cli::app::effective::to_toml(&config, "dump")
        .unwrap_or_else(|e| panic!("an accepted config cannot be dumped: {e}"));
    let reloaded = Config::from_toml(&dump, None)
        .unwrap_or_else(|e| panic!("a dump does not load: {e}\n{dump}"));
    let again =
        detour_cli::app::effective::to_toml(&reloaded, "dump").expect("a reloaded dump dumps");
    assert_eq!(
        again, dump,
        "a dump loads back to a different configuration"
    );
    match server {
        Ok(s) => assert_eq!(format!("{s:?}"), format!("{:?}", config.server)),
        Err(e) => panic!("the binary accepted [server]; ServerConfig::from_toml said {e}"),
    }
}
