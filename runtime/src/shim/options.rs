//! Per-runtime options from containerd. `ctr run --runtime-config-path FILE` and a CRI
//! runtime's `options` table (`ConfigPath = "FILE"`) reach the shim with Create as
//! containerd's `runtimeoptions.v1.Options` message; FILE is a husk configuration file
//! whose keys override those of the configuration the shim read at start.

use std::path::PathBuf;

use containerd_shim::protos::protobuf::rt::WireType;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::CodedInputStream;

use crate::config::Config;

/// The message's name, as containerd's type URL ends.
const OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";

/// The configuration the Create request's options name, if they name one.
pub fn config(options: Option<&Any>) -> Result<Option<Config>, String> {
    let Some(options) = options.filter(|any| !any.type_url.is_empty()) else {
        return Ok(None);
    };
    if !options.type_url.ends_with(OPTIONS_TYPE) {
        return Err(format!(
            "runtime options of type {} (husk takes {OPTIONS_TYPE}, with a ConfigPath)",
            options.type_url
        ));
    }
    let Some(path) = config_path(&options.value)? else {
        return Ok(None);
    };
    let config = Config::read(&path).map_err(|e| e.to_string())?;
    if config.root.is_some() {
        // The `delete` subcommand, which cleans up after a dead shim, gets no options.
        return Err(format!(
            "{}: `root` cannot be set per runtime (the shim's state root comes from \
             HUSK_CONFIG or /etc/husk/config.toml)",
            path.display()
        ));
    }
    Ok(Some(config))
}

/// `config_path` (field 2) of an encoded `runtimeoptions.v1.Options`; an empty one is none.
fn config_path(encoded: &[u8]) -> Result<Option<PathBuf>, String> {
    let bad = |e: containerd_shim::protos::protobuf::Error| format!("runtime options: {e}");
    let mut input = CodedInputStream::from_bytes(encoded);
    let mut path = None;
    while !input.eof().map_err(bad)? {
        let tag = input.read_raw_varint32().map_err(bad)?;
        let wire_type = WireType::new(tag & 7)
            .ok_or_else(|| format!("runtime options: wire type {} is not valid", tag & 7))?;
        match (tag >> 3, wire_type) {
            (2, WireType::LengthDelimited) => path = Some(input.read_string().map_err(bad)?),
            (_, wire_type) => input.skip_field(wire_type).map_err(bad)?,
        }
    }
    Ok(path.filter(|p| !p.is_empty()).map(PathBuf::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(encoded: &[u8]) -> Any {
        let mut any = Any::new();
        any.type_url = OPTIONS_TYPE.to_owned();
        any.value = encoded.to_vec();
        any
    }

    #[test]
    fn the_config_path_is_field_two() {
        // type_url (1) = "x", config_path (2) = "/c.toml"
        let encoded = b"\x0a\x01x\x12\x07/c.toml";
        assert_eq!(config_path(encoded), Ok(Some(PathBuf::from("/c.toml"))));
        assert_eq!(config_path(b""), Ok(None));
        assert!(config_path(b"\x12\x09/c.t").is_err(), "truncated");
    }

    #[test]
    fn no_options_or_no_path_is_no_config() {
        assert_eq!(config(None), Ok(None));
        assert_eq!(config(Some(&Any::new())), Ok(None));
        assert_eq!(config(Some(&options(b"\x0a\x01x"))), Ok(None));
    }

    #[test]
    fn options_name_a_husk_configuration() {
        let dir = std::env::temp_dir().join(format!("husk-options-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "memory_mib = 96\n").unwrap();
        let mut encoded = vec![0x12, file.as_os_str().len() as u8];
        encoded.extend_from_slice(file.as_os_str().as_encoded_bytes());
        let config = config(Some(&options(&encoded))).unwrap().unwrap();
        assert_eq!(config.memory_mib, Some(96));

        std::fs::write(&file, "root = \"/elsewhere\"\n").unwrap();
        let refused = super::config(Some(&options(&encoded))).unwrap_err();
        assert!(refused.contains("`root` cannot be set"), "{refused}");

        let mut other = options(&encoded);
        other.type_url = "containerd.runc.v1.Options".into();
        assert!(super::config(Some(&other))
            .unwrap_err()
            .contains("husk takes"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
