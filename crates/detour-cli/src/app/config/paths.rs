//! Relative paths in a configuration: resolved against the directory of the
//! file they were written in, never against the working directory.
//!
//! A service manager starts `detour` wherever it likes (systemd: `/`), so
//! `cert = "site.pem"` next to `/etc/detour/detour.toml` must mean
//! `/etc/detour/site.pem` whoever starts the process, and a reload must read
//! the same file as the start. A configuration that comes from a source with
//! no directory (a key in a store) has nothing to resolve against: a relative
//! path there is refused, with its field named.
//!
//! The path-like fields: each TLS listener's `cert` and `key`, each
//! upstream's `tls.ca` and `discovery.file`.

use std::path::{Path, PathBuf};

use detour_server::config::ConfigError;

use super::Config;

/// The directory that relative paths of the file at `file` are resolved
/// against: its parent, made absolute against the working directory now
/// (so a later reload, from anywhere, reads the same files).
///
/// # Errors
/// The working directory cannot be read (only consulted for a relative
/// `file`).
pub fn base_dir_of(file: &Path) -> Result<PathBuf, ConfigError> {
    let absolute = std::path::absolute(file)
        .map_err(|e| ConfigError::of_file(file, format!("cannot make the path absolute: {e}")))?;
    Ok(absolute
        .parent()
        .map_or_else(|| PathBuf::from("/"), Path::to_path_buf))
}

/// Make every relative path of `config` absolute against `base_dir`; with no
/// base directory, refuse the first relative path.
///
/// # Errors
/// A relative path and no `base_dir`, naming its field.
pub fn resolve(config: &mut Config, base_dir: Option<&Path>) -> Result<(), ConfigError> {
    for (field, path) in path_fields(config) {
        if path.is_absolute() {
            continue;
        }
        match base_dir {
            Some(base) => *path = base.join(&*path),
            None => {
                return Err(ConfigError::field(
                    field,
                    format!(
                        "{:?} is a relative path, and this configuration has no directory to \
                         resolve it against: write an absolute path",
                        path.display()
                    ),
                ))
            }
        }
    }
    Ok(())
}

/// Every path-like field of `config`, with its dotted name.
fn path_fields(config: &mut Config) -> Vec<(String, &mut PathBuf)> {
    let mut found = Vec::new();
    if let Some(path) = config.server.upgrade_socket.as_mut() {
        found.push(("server.upgrade_socket".to_string(), path));
    }
    for (i, listener) in config.server.listeners.iter_mut().enumerate() {
        let Some(tls) = listener.tls.as_mut() else {
            continue;
        };
        let one = tls.certs.len() == 1;
        for (j, pair) in tls.certs.iter_mut().enumerate() {
            // Named as the TLS loader names them: `tls` for one pair,
            // `tls[j]` in a list.
            let at = if one {
                format!("server.listeners[{i}].tls")
            } else {
                format!("server.listeners[{i}].tls[{j}]")
            };
            found.push((format!("{at}.cert"), &mut pair.cert));
            found.push((format!("{at}.key"), &mut pair.key));
        }
    }
    for (name, up) in config.upstreams.iter_mut() {
        if let Some(ca) = up.tls.as_mut().and_then(|t| t.ca.as_mut()) {
            found.push((format!("upstreams.{name}.tls.ca"), ca));
        }
        let Some(d) = up.discovery.as_mut() else {
            continue;
        };
        if let Some(file) = d.file.as_mut() {
            found.push((format!("upstreams.{name}.discovery.file"), file));
        }
        if let Some(k) = d.kubernetes.as_mut().and_then(|k| k.kubeconfig.as_mut()) {
            found.push((
                format!("upstreams.{name}.discovery.kubernetes.kubeconfig"),
                k,
            ));
        }
        if let Some(etcd) = d.etcd.as_mut() {
            let at = format!("upstreams.{name}.discovery.etcd");
            if let Some(p) = etcd.password_file.as_mut() {
                found.push((format!("{at}.password_file"), p));
            }
            if let Some(t) = etcd.tls.as_mut() {
                for (field, p) in [
                    ("ca", &mut t.ca),
                    ("cert", &mut t.cert),
                    ("key", &mut t.key),
                ] {
                    if let Some(p) = p.as_mut() {
                        found.push((format!("{at}.tls.{field}"), p));
                    }
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
[[server.listeners]]
addr = "127.0.0.1:0"
tls = [{ cert = "a.pem", key = "/abs/a.key" }, { cert = "b.pem", key = "../b.key" }]
[upstreams.app]
discovery = { file = "backends.toml", etcd = { endpoints = ["https://e:2379"], prefix = "/p/", user = "u", password_file = "etcd.pw", tls = { ca = "etcd-ca.pem" } } }
tls = { ca = "ca/roots.pem", verify = false }
"#;

    fn parsed() -> Config {
        toml::from_str(TEXT).unwrap()
    }

    #[test]
    fn relative_paths_are_joined_to_the_base_and_absolute_ones_kept() {
        let mut c = parsed();
        resolve(&mut c, Some(Path::new("/etc/detour"))).unwrap();
        let certs = &c.server.listeners[0].tls.as_ref().unwrap().certs;
        assert_eq!(certs[0].cert, Path::new("/etc/detour/a.pem"));
        assert_eq!(certs[0].key, Path::new("/abs/a.key"));
        assert_eq!(certs[1].key, Path::new("/etc/detour/../b.key"));
        let up = &c.upstreams["app"];
        assert_eq!(
            up.tls.as_ref().unwrap().ca.as_deref(),
            Some(Path::new("/etc/detour/ca/roots.pem"))
        );
        assert_eq!(
            up.discovery.as_ref().unwrap().file.as_deref(),
            Some(Path::new("/etc/detour/backends.toml"))
        );
        let etcd = up.discovery.as_ref().unwrap().etcd.as_ref().unwrap();
        assert_eq!(
            etcd.password_file.as_deref(),
            Some(Path::new("/etc/detour/etcd.pw"))
        );
        let ca = etcd.tls.as_ref().unwrap().ca.as_deref();
        assert_eq!(ca, Some(Path::new("/etc/detour/etcd-ca.pem")));
    }

    #[test]
    fn without_a_directory_a_relative_path_is_refused_by_name() {
        let e = resolve(&mut parsed(), None).unwrap_err();
        assert_eq!(
            e.field.as_deref(),
            Some("server.listeners[0].tls[0].cert"),
            "{e}"
        );
        let mut only_ca: Config = toml::from_str(
            "[upstreams.app]\nbackends = [{ addr = \"127.0.0.1:1\" }]\ntls = { ca = \"r.pem\" }",
        )
        .unwrap();
        let e = resolve(&mut only_ca, None).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("upstreams.app.tls.ca"));
        let mut absolute: Config =
            toml::from_str("[upstreams.app]\ndiscovery = { file = \"/srv/b.toml\" }").unwrap();
        resolve(&mut absolute, None).unwrap();
    }

    #[test]
    fn a_relative_file_s_directory_is_made_absolute() {
        let base = base_dir_of(Path::new("conf/detour.toml")).unwrap();
        assert!(base.is_absolute());
        assert!(base.ends_with("conf"));
        assert_eq!(
            base_dir_of(Path::new("/etc/detour.toml")).unwrap(),
            Path::new("/etc")
        );
    }
}
