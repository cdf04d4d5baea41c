//! Puts `netpol-cni` into the node's CNI configuration: the binary into the CNI bin
//! directory, and an entry at the end of the plugin list of the conf list the runtime
//! uses (see `runtime_conf`). The pod network's own
//! daemon may rewrite its conf list at any time, so the agent checks again on every
//! resync; uninstalling takes the entry out again.

use std::io;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

pub const PLUGIN_TYPE: &str = "netpol-cni";

/// Copies `binary` to `bin_dir/netpol-cni` unless the same bytes are there, atomically.
pub fn install_binary(binary: &Path, bin_dir: &Path) -> io::Result<bool> {
    let bytes = std::fs::read(binary)?;
    let target = bin_dir.join(PLUGIN_TYPE);
    if std::fs::read(&target).is_ok_and(|old| old == bytes) {
        return Ok(false);
    }
    write_atomically(&target, &bytes, 0o755)?;
    Ok(true)
}

/// The network configuration the runtime uses, as libcni picks it: the first file by
/// name among `.conf`, `.conflist` and `.json` that can be read and holds a network (a
/// conf list without plugins, or an unreadable file, is skipped, as runtimes skip them).
/// Returns the file and whether it is a conf list.
pub fn runtime_conf(conf_dir: &Path) -> io::Result<Option<(PathBuf, Value, bool)>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(conf_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x == "conf" || x == "conflist" || x == "json")
        })
        .collect();
    files.sort();
    for path in files {
        let value = match read_json(&path) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "CNI configuration skipped (as the runtime skips it)");
                continue;
            }
        };
        let is_list = path.extension().is_some_and(|x| x == "conflist");
        let holds_network = if is_list {
            value["plugins"].as_array().is_some_and(|p| !p.is_empty())
        } else {
            value["type"].is_string()
        };
        if holds_network {
            return Ok(Some((path, value, is_list)));
        }
    }
    Ok(None)
}

/// Makes `netpol-cni` the last plugin of the conf list the runtime uses (see
/// `runtime_conf`). Returns the file when it was changed; an error when the runtime's
/// configuration is a single plugin (`.conf`), where nothing can be chained.
pub fn ensure_chained(conf_dir: &Path, socket: &str) -> io::Result<Option<PathBuf>> {
    let Some((path, mut list, is_list)) = runtime_conf(conf_dir)? else {
        return Ok(None);
    };
    if !is_list {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is the runtime's network configuration and a single plugin, not a conf list: netpol-cni cannot be chained there",
                path.display()
            ),
        ));
    }
    let Some(plugins) = list["plugins"].as_array_mut() else {
        return Ok(None);
    };
    let entry = json!({"type": PLUGIN_TYPE, "socket": socket});
    if plugins.last() == Some(&entry) {
        return Ok(None);
    }
    plugins.retain(|p| p["type"] != PLUGIN_TYPE);
    plugins.push(entry);
    write_json(&path, &list)?;
    Ok(Some(path))
}

/// Takes `netpol-cni` out of every conf list of `conf_dir`; files that cannot be read are
/// none of netpol's and are left alone. Returns the files changed.
pub fn unchain(conf_dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut changed = Vec::new();
    for entry in std::fs::read_dir(conf_dir)? {
        let path = entry?.path();
        if path.extension().is_none_or(|x| x != "conflist") {
            continue;
        }
        let Ok(mut list) = read_json(&path) else {
            continue;
        };
        let Some(plugins) = list["plugins"].as_array_mut() else {
            continue;
        };
        let before = plugins.len();
        plugins.retain(|p| p["type"] != PLUGIN_TYPE);
        if plugins.len() != before {
            write_json(&path, &list)?;
            changed.push(path);
        }
    }
    changed.sort();
    Ok(changed)
}

fn read_json(path: &Path) -> io::Result<Value> {
    serde_json::from_slice(&std::fs::read(path)?).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}

fn write_json(path: &Path, value: &Value) -> io::Result<()> {
    let text = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    write_atomically(path, &text, 0o644)
}

/// The runtime never reads half a file: write beside it, then rename over it.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("no file name"))?
        .to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.netpol-tmp"));
    std::fs::write(&tmp, bytes)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("netpol-cni-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn chained_last_once_and_removed_again() {
        let d = dir("chain");
        let list = json!({"cniVersion": "1.0.0", "name": "kindnet",
            "plugins": [{"type": "ptp"}, {"type": "portmap"}]});
        std::fs::write(d.join("10-kindnet.conflist"), list.to_string()).unwrap();
        std::fs::write(d.join("99-other.conflist"), list.to_string()).unwrap();
        assert_eq!(
            ensure_chained(&d, "/run/netpol/cni.sock").unwrap(),
            Some(d.join("10-kindnet.conflist"))
        );
        assert_eq!(ensure_chained(&d, "/run/netpol/cni.sock").unwrap(), None);
        let got = read_json(&d.join("10-kindnet.conflist")).unwrap();
        let types: Vec<&str> = got["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["ptp", "portmap", PLUGIN_TYPE]);
        assert_eq!(read_json(&d.join("99-other.conflist")).unwrap(), list);
        assert_eq!(unchain(&d).unwrap(), vec![d.join("10-kindnet.conflist")]);
        assert_eq!(read_json(&d.join("10-kindnet.conflist")).unwrap(), list);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_binary_is_copied_only_when_it_differs() {
        let d = dir("bin");
        let src = d.join("src");
        std::fs::write(&src, b"v1").unwrap();
        let bin = d.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        assert!(install_binary(&src, &bin).unwrap());
        assert!(!install_binary(&src, &bin).unwrap());
        std::fs::write(&src, b"v2").unwrap();
        assert!(install_binary(&src, &bin).unwrap());
        assert_eq!(std::fs::read(bin.join(PLUGIN_TYPE)).unwrap(), b"v2");
        let _ = std::fs::remove_dir_all(&d);
    }
}
